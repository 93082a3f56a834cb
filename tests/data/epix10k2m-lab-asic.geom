; ePix10k2M with a lab layout like the real detector: 4 quadrants of 2 x 2 modules around
; the beam, quadrant q turned by q x 90 degrees (so fs/ss point along +x, +y, -x, -y), a
; 20-pixel hole at the beam and 6-pixel gaps between modules, 2-pixel gaps between ASICs.
; 64 ASICs of 176 x 192 pixels, modules stacked along the slow scan (slab 5632 x 384).
photon_energy = /LCLS/photon_energy_eV
adu_per_photon = 1
clen = 0.1
res = 10000
data = /entry_1/data_1/data
dim0 = %
dim1 = ss
dim2 = fs
peak_list = /entry_1/result_1
peak_list_type = cxi

p0a0/min_fs = 0
p0a0/max_fs = 191
p0a0/min_ss = 0
p0a0/max_ss = 175
p0a0/fs = +1.000000x +0.000000y
p0a0/ss = +0.000000x +1.000000y
p0a0/corner_x = -784.30
p0a0/corner_y = -726.20

p0a1/min_fs = 192
p0a1/max_fs = 383
p0a1/min_ss = 0
p0a1/max_ss = 175
p0a1/fs = +1.000000x +0.000000y
p0a1/ss = +0.000000x +1.000000y
p0a1/corner_x = -590.30
p0a1/corner_y = -726.20

p0a2/min_fs = 0
p0a2/max_fs = 191
p0a2/min_ss = 176
p0a2/max_ss = 351
p0a2/fs = +1.000000x +0.000000y
p0a2/ss = +0.000000x +1.000000y
p0a2/corner_x = -784.30
p0a2/corner_y = -548.20

p0a3/min_fs = 192
p0a3/max_fs = 383
p0a3/min_ss = 176
p0a3/max_ss = 351
p0a3/fs = +1.000000x +0.000000y
p0a3/ss = +0.000000x +1.000000y
p0a3/corner_x = -590.30
p0a3/corner_y = -548.20

p1a0/min_fs = 0
p1a0/max_fs = 191
p1a0/min_ss = 352
p1a0/max_ss = 527
p1a0/fs = +1.000000x +0.000000y
p1a0/ss = +0.000000x +1.000000y
p1a0/corner_x = -392.30
p1a0/corner_y = -726.20

p1a1/min_fs = 192
p1a1/max_fs = 383
p1a1/min_ss = 352
p1a1/max_ss = 527
p1a1/fs = +1.000000x +0.000000y
p1a1/ss = +0.000000x +1.000000y
p1a1/corner_x = -198.30
p1a1/corner_y = -726.20

p1a2/min_fs = 0
p1a2/max_fs = 191
p1a2/min_ss = 528
p1a2/max_ss = 703
p1a2/fs = +1.000000x +0.000000y
p1a2/ss = +0.000000x +1.000000y
p1a2/corner_x = -392.30
p1a2/corner_y = -548.20

p1a3/min_fs = 192
p1a3/max_fs = 383
p1a3/min_ss = 528
p1a3/max_ss = 703
p1a3/fs = +1.000000x +0.000000y
p1a3/ss = +0.000000x +1.000000y
p1a3/corner_x = -198.30
p1a3/corner_y = -548.20

p2a0/min_fs = 0
p2a0/max_fs = 191
p2a0/min_ss = 704
p2a0/max_ss = 879
p2a0/fs = +1.000000x +0.000000y
p2a0/ss = +0.000000x +1.000000y
p2a0/corner_x = -784.30
p2a0/corner_y = -366.20

p2a1/min_fs = 192
p2a1/max_fs = 383
p2a1/min_ss = 704
p2a1/max_ss = 879
p2a1/fs = +1.000000x +0.000000y
p2a1/ss = +0.000000x +1.000000y
p2a1/corner_x = -590.30
p2a1/corner_y = -366.20

p2a2/min_fs = 0
p2a2/max_fs = 191
p2a2/min_ss = 880
p2a2/max_ss = 1055
p2a2/fs = +1.000000x +0.000000y
p2a2/ss = +0.000000x +1.000000y
p2a2/corner_x = -784.30
p2a2/corner_y = -188.20

p2a3/min_fs = 192
p2a3/max_fs = 383
p2a3/min_ss = 880
p2a3/max_ss = 1055
p2a3/fs = +1.000000x +0.000000y
p2a3/ss = +0.000000x +1.000000y
p2a3/corner_x = -590.30
p2a3/corner_y = -188.20

p3a0/min_fs = 0
p3a0/max_fs = 191
p3a0/min_ss = 1056
p3a0/max_ss = 1231
p3a0/fs = +1.000000x +0.000000y
p3a0/ss = +0.000000x +1.000000y
p3a0/corner_x = -392.30
p3a0/corner_y = -366.20

p3a1/min_fs = 192
p3a1/max_fs = 383
p3a1/min_ss = 1056
p3a1/max_ss = 1231
p3a1/fs = +1.000000x +0.000000y
p3a1/ss = +0.000000x +1.000000y
p3a1/corner_x = -198.30
p3a1/corner_y = -366.20

p3a2/min_fs = 0
p3a2/max_fs = 191
p3a2/min_ss = 1232
p3a2/max_ss = 1407
p3a2/fs = +1.000000x +0.000000y
p3a2/ss = +0.000000x +1.000000y
p3a2/corner_x = -392.30
p3a2/corner_y = -188.20

p3a3/min_fs = 192
p3a3/max_fs = 383
p3a3/min_ss = 1232
p3a3/max_ss = 1407
p3a3/fs = +1.000000x +0.000000y
p3a3/ss = +0.000000x +1.000000y
p3a3/corner_x = -198.30
p3a3/corner_y = -188.20

p4a0/min_fs = 0
p4a0/max_fs = 191
p4a0/min_ss = 1408
p4a0/max_ss = 1583
p4a0/fs = +0.000000x +1.000000y
p4a0/ss = -1.000000x +0.000000y
p4a0/corner_x = 727.70
p4a0/corner_y = -790.20

p4a1/min_fs = 192
p4a1/max_fs = 383
p4a1/min_ss = 1408
p4a1/max_ss = 1583
p4a1/fs = +0.000000x +1.000000y
p4a1/ss = -1.000000x +0.000000y
p4a1/corner_x = 727.70
p4a1/corner_y = -596.20

p4a2/min_fs = 0
p4a2/max_fs = 191
p4a2/min_ss = 1584
p4a2/max_ss = 1759
p4a2/fs = +0.000000x +1.000000y
p4a2/ss = -1.000000x +0.000000y
p4a2/corner_x = 549.70
p4a2/corner_y = -790.20

p4a3/min_fs = 192
p4a3/max_fs = 383
p4a3/min_ss = 1584
p4a3/max_ss = 1759
p4a3/fs = +0.000000x +1.000000y
p4a3/ss = -1.000000x +0.000000y
p4a3/corner_x = 549.70
p4a3/corner_y = -596.20

p5a0/min_fs = 0
p5a0/max_fs = 191
p5a0/min_ss = 1760
p5a0/max_ss = 1935
p5a0/fs = +0.000000x +1.000000y
p5a0/ss = -1.000000x +0.000000y
p5a0/corner_x = 727.70
p5a0/corner_y = -398.20

p5a1/min_fs = 192
p5a1/max_fs = 383
p5a1/min_ss = 1760
p5a1/max_ss = 1935
p5a1/fs = +0.000000x +1.000000y
p5a1/ss = -1.000000x +0.000000y
p5a1/corner_x = 727.70
p5a1/corner_y = -204.20

p5a2/min_fs = 0
p5a2/max_fs = 191
p5a2/min_ss = 1936
p5a2/max_ss = 2111
p5a2/fs = +0.000000x +1.000000y
p5a2/ss = -1.000000x +0.000000y
p5a2/corner_x = 549.70
p5a2/corner_y = -398.20

p5a3/min_fs = 192
p5a3/max_fs = 383
p5a3/min_ss = 1936
p5a3/max_ss = 2111
p5a3/fs = +0.000000x +1.000000y
p5a3/ss = -1.000000x +0.000000y
p5a3/corner_x = 549.70
p5a3/corner_y = -204.20

p6a0/min_fs = 0
p6a0/max_fs = 191
p6a0/min_ss = 2112
p6a0/max_ss = 2287
p6a0/fs = +0.000000x +1.000000y
p6a0/ss = -1.000000x +0.000000y
p6a0/corner_x = 367.70
p6a0/corner_y = -790.20

p6a1/min_fs = 192
p6a1/max_fs = 383
p6a1/min_ss = 2112
p6a1/max_ss = 2287
p6a1/fs = +0.000000x +1.000000y
p6a1/ss = -1.000000x +0.000000y
p6a1/corner_x = 367.70
p6a1/corner_y = -596.20

p6a2/min_fs = 0
p6a2/max_fs = 191
p6a2/min_ss = 2288
p6a2/max_ss = 2463
p6a2/fs = +0.000000x +1.000000y
p6a2/ss = -1.000000x +0.000000y
p6a2/corner_x = 189.70
p6a2/corner_y = -790.20

p6a3/min_fs = 192
p6a3/max_fs = 383
p6a3/min_ss = 2288
p6a3/max_ss = 2463
p6a3/fs = +0.000000x +1.000000y
p6a3/ss = -1.000000x +0.000000y
p6a3/corner_x = 189.70
p6a3/corner_y = -596.20

p7a0/min_fs = 0
p7a0/max_fs = 191
p7a0/min_ss = 2464
p7a0/max_ss = 2639
p7a0/fs = +0.000000x +1.000000y
p7a0/ss = -1.000000x +0.000000y
p7a0/corner_x = 367.70
p7a0/corner_y = -398.20

p7a1/min_fs = 192
p7a1/max_fs = 383
p7a1/min_ss = 2464
p7a1/max_ss = 2639
p7a1/fs = +0.000000x +1.000000y
p7a1/ss = -1.000000x +0.000000y
p7a1/corner_x = 367.70
p7a1/corner_y = -204.20

p7a2/min_fs = 0
p7a2/max_fs = 191
p7a2/min_ss = 2640
p7a2/max_ss = 2815
p7a2/fs = +0.000000x +1.000000y
p7a2/ss = -1.000000x +0.000000y
p7a2/corner_x = 189.70
p7a2/corner_y = -398.20

p7a3/min_fs = 192
p7a3/max_fs = 383
p7a3/min_ss = 2640
p7a3/max_ss = 2815
p7a3/fs = +0.000000x +1.000000y
p7a3/ss = -1.000000x +0.000000y
p7a3/corner_x = 189.70
p7a3/corner_y = -204.20

p8a0/min_fs = 0
p8a0/max_fs = 191
p8a0/min_ss = 2816
p8a0/max_ss = 2991
p8a0/fs = -1.000000x +0.000000y
p8a0/ss = +0.000000x -1.000000y
p8a0/corner_x = 791.70
p8a0/corner_y = 721.80

p8a1/min_fs = 192
p8a1/max_fs = 383
p8a1/min_ss = 2816
p8a1/max_ss = 2991
p8a1/fs = -1.000000x +0.000000y
p8a1/ss = +0.000000x -1.000000y
p8a1/corner_x = 597.70
p8a1/corner_y = 721.80

p8a2/min_fs = 0
p8a2/max_fs = 191
p8a2/min_ss = 2992
p8a2/max_ss = 3167
p8a2/fs = -1.000000x +0.000000y
p8a2/ss = +0.000000x -1.000000y
p8a2/corner_x = 791.70
p8a2/corner_y = 543.80

p8a3/min_fs = 192
p8a3/max_fs = 383
p8a3/min_ss = 2992
p8a3/max_ss = 3167
p8a3/fs = -1.000000x +0.000000y
p8a3/ss = +0.000000x -1.000000y
p8a3/corner_x = 597.70
p8a3/corner_y = 543.80

p9a0/min_fs = 0
p9a0/max_fs = 191
p9a0/min_ss = 3168
p9a0/max_ss = 3343
p9a0/fs = -1.000000x +0.000000y
p9a0/ss = +0.000000x -1.000000y
p9a0/corner_x = 399.70
p9a0/corner_y = 721.80

p9a1/min_fs = 192
p9a1/max_fs = 383
p9a1/min_ss = 3168
p9a1/max_ss = 3343
p9a1/fs = -1.000000x +0.000000y
p9a1/ss = +0.000000x -1.000000y
p9a1/corner_x = 205.70
p9a1/corner_y = 721.80

p9a2/min_fs = 0
p9a2/max_fs = 191
p9a2/min_ss = 3344
p9a2/max_ss = 3519
p9a2/fs = -1.000000x +0.000000y
p9a2/ss = +0.000000x -1.000000y
p9a2/corner_x = 399.70
p9a2/corner_y = 543.80

p9a3/min_fs = 192
p9a3/max_fs = 383
p9a3/min_ss = 3344
p9a3/max_ss = 3519
p9a3/fs = -1.000000x +0.000000y
p9a3/ss = +0.000000x -1.000000y
p9a3/corner_x = 205.70
p9a3/corner_y = 543.80

p10a0/min_fs = 0
p10a0/max_fs = 191
p10a0/min_ss = 3520
p10a0/max_ss = 3695
p10a0/fs = -1.000000x +0.000000y
p10a0/ss = +0.000000x -1.000000y
p10a0/corner_x = 791.70
p10a0/corner_y = 361.80

p10a1/min_fs = 192
p10a1/max_fs = 383
p10a1/min_ss = 3520
p10a1/max_ss = 3695
p10a1/fs = -1.000000x +0.000000y
p10a1/ss = +0.000000x -1.000000y
p10a1/corner_x = 597.70
p10a1/corner_y = 361.80

p10a2/min_fs = 0
p10a2/max_fs = 191
p10a2/min_ss = 3696
p10a2/max_ss = 3871
p10a2/fs = -1.000000x +0.000000y
p10a2/ss = +0.000000x -1.000000y
p10a2/corner_x = 791.70
p10a2/corner_y = 183.80

p10a3/min_fs = 192
p10a3/max_fs = 383
p10a3/min_ss = 3696
p10a3/max_ss = 3871
p10a3/fs = -1.000000x +0.000000y
p10a3/ss = +0.000000x -1.000000y
p10a3/corner_x = 597.70
p10a3/corner_y = 183.80

p11a0/min_fs = 0
p11a0/max_fs = 191
p11a0/min_ss = 3872
p11a0/max_ss = 4047
p11a0/fs = -1.000000x +0.000000y
p11a0/ss = +0.000000x -1.000000y
p11a0/corner_x = 399.70
p11a0/corner_y = 361.80

p11a1/min_fs = 192
p11a1/max_fs = 383
p11a1/min_ss = 3872
p11a1/max_ss = 4047
p11a1/fs = -1.000000x +0.000000y
p11a1/ss = +0.000000x -1.000000y
p11a1/corner_x = 205.70
p11a1/corner_y = 361.80

p11a2/min_fs = 0
p11a2/max_fs = 191
p11a2/min_ss = 4048
p11a2/max_ss = 4223
p11a2/fs = -1.000000x +0.000000y
p11a2/ss = +0.000000x -1.000000y
p11a2/corner_x = 399.70
p11a2/corner_y = 183.80

p11a3/min_fs = 192
p11a3/max_fs = 383
p11a3/min_ss = 4048
p11a3/max_ss = 4223
p11a3/fs = -1.000000x +0.000000y
p11a3/ss = +0.000000x -1.000000y
p11a3/corner_x = 205.70
p11a3/corner_y = 183.80

p12a0/min_fs = 0
p12a0/max_fs = 191
p12a0/min_ss = 4224
p12a0/max_ss = 4399
p12a0/fs = +0.000000x -1.000000y
p12a0/ss = +1.000000x +0.000000y
p12a0/corner_x = -720.30
p12a0/corner_y = 785.80

p12a1/min_fs = 192
p12a1/max_fs = 383
p12a1/min_ss = 4224
p12a1/max_ss = 4399
p12a1/fs = +0.000000x -1.000000y
p12a1/ss = +1.000000x +0.000000y
p12a1/corner_x = -720.30
p12a1/corner_y = 591.80

p12a2/min_fs = 0
p12a2/max_fs = 191
p12a2/min_ss = 4400
p12a2/max_ss = 4575
p12a2/fs = +0.000000x -1.000000y
p12a2/ss = +1.000000x +0.000000y
p12a2/corner_x = -542.30
p12a2/corner_y = 785.80

p12a3/min_fs = 192
p12a3/max_fs = 383
p12a3/min_ss = 4400
p12a3/max_ss = 4575
p12a3/fs = +0.000000x -1.000000y
p12a3/ss = +1.000000x +0.000000y
p12a3/corner_x = -542.30
p12a3/corner_y = 591.80

p13a0/min_fs = 0
p13a0/max_fs = 191
p13a0/min_ss = 4576
p13a0/max_ss = 4751
p13a0/fs = +0.000000x -1.000000y
p13a0/ss = +1.000000x +0.000000y
p13a0/corner_x = -720.30
p13a0/corner_y = 393.80

p13a1/min_fs = 192
p13a1/max_fs = 383
p13a1/min_ss = 4576
p13a1/max_ss = 4751
p13a1/fs = +0.000000x -1.000000y
p13a1/ss = +1.000000x +0.000000y
p13a1/corner_x = -720.30
p13a1/corner_y = 199.80

p13a2/min_fs = 0
p13a2/max_fs = 191
p13a2/min_ss = 4752
p13a2/max_ss = 4927
p13a2/fs = +0.000000x -1.000000y
p13a2/ss = +1.000000x +0.000000y
p13a2/corner_x = -542.30
p13a2/corner_y = 393.80

p13a3/min_fs = 192
p13a3/max_fs = 383
p13a3/min_ss = 4752
p13a3/max_ss = 4927
p13a3/fs = +0.000000x -1.000000y
p13a3/ss = +1.000000x +0.000000y
p13a3/corner_x = -542.30
p13a3/corner_y = 199.80

p14a0/min_fs = 0
p14a0/max_fs = 191
p14a0/min_ss = 4928
p14a0/max_ss = 5103
p14a0/fs = +0.000000x -1.000000y
p14a0/ss = +1.000000x +0.000000y
p14a0/corner_x = -360.30
p14a0/corner_y = 785.80

p14a1/min_fs = 192
p14a1/max_fs = 383
p14a1/min_ss = 4928
p14a1/max_ss = 5103
p14a1/fs = +0.000000x -1.000000y
p14a1/ss = +1.000000x +0.000000y
p14a1/corner_x = -360.30
p14a1/corner_y = 591.80

p14a2/min_fs = 0
p14a2/max_fs = 191
p14a2/min_ss = 5104
p14a2/max_ss = 5279
p14a2/fs = +0.000000x -1.000000y
p14a2/ss = +1.000000x +0.000000y
p14a2/corner_x = -182.30
p14a2/corner_y = 785.80

p14a3/min_fs = 192
p14a3/max_fs = 383
p14a3/min_ss = 5104
p14a3/max_ss = 5279
p14a3/fs = +0.000000x -1.000000y
p14a3/ss = +1.000000x +0.000000y
p14a3/corner_x = -182.30
p14a3/corner_y = 591.80

p15a0/min_fs = 0
p15a0/max_fs = 191
p15a0/min_ss = 5280
p15a0/max_ss = 5455
p15a0/fs = +0.000000x -1.000000y
p15a0/ss = +1.000000x +0.000000y
p15a0/corner_x = -360.30
p15a0/corner_y = 393.80

p15a1/min_fs = 192
p15a1/max_fs = 383
p15a1/min_ss = 5280
p15a1/max_ss = 5455
p15a1/fs = +0.000000x -1.000000y
p15a1/ss = +1.000000x +0.000000y
p15a1/corner_x = -360.30
p15a1/corner_y = 199.80

p15a2/min_fs = 0
p15a2/max_fs = 191
p15a2/min_ss = 5456
p15a2/max_ss = 5631
p15a2/fs = +0.000000x -1.000000y
p15a2/ss = +1.000000x +0.000000y
p15a2/corner_x = -182.30
p15a2/corner_y = 393.80

p15a3/min_fs = 192
p15a3/max_fs = 383
p15a3/min_ss = 5456
p15a3/max_ss = 5631
p15a3/fs = +0.000000x -1.000000y
p15a3/ss = +1.000000x +0.000000y
p15a3/corner_x = -182.30
p15a3/corner_y = 199.80
