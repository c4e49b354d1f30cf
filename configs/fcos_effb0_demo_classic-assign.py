# fcos_effb0_demo with classic FCOS targets (per-level regress ranges, centre sampling radius 1.5,
# geometric centerness) instead of dynamic SimOTA assignment: the demo-size twin of
# fcos_effb0_classic-assign.py, compared in benchmarks/bench_demo_peers.py.
_base_ = './fcos_effb0_demo.py'
model = dict(bbox_head=dict(assign_mode='classic', center_sampling=True, center_sample_radius=1.5,
                            # mmdet FCOSHead's own init (the base's box bias is for dynamic assignment)
                            init_cfg=dict(_delete_=True, type='Normal', layer='Conv2d', std=0.01,
                                          override=dict(type='Normal', name='conv_cls', std=0.01,
                                                        bias_prob=0.01))),
             train_cfg=dict(_delete_=True))
