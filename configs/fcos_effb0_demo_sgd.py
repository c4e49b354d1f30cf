# fcos_effb0_demo with the optimizer of the previous demo schedule (SGD lr 0.02, momentum 0.9, weight decay
# 1e-4, the COCO recipe's optimizer family) instead of AdamW; everything else identical. The optimizer
# ablation of benchmarks/RESULTS.md ("Demo recipe").
_base_ = './fcos_effb0_demo.py'
optim_wrapper = dict(optimizer=dict(_delete_=True, type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
