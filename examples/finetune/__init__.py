"""Real fine-tuning tasks for comparing SL-SAM with SAM, AdamW and cheap-SAM baselines.

``tasks``: the data and pretrained models (offline); ``methods``: the optimizers
compared, behind one step interface; ``loop``: training with test accuracy at fixed
wall-clock intervals; ``report``: time-to-accuracy tables and figures.
"""
