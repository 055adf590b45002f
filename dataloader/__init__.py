"""Data: ImageFolder loaders with the paper's preprocessing (Sec. 2, 4.1), dataset stats, the demo set.

See dataloader/dataloader.py (build_loaders, build_eval_loader), transforms.py, stats.py, demo.py.
"""
