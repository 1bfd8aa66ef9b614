"""Training: the trainer, distributed training (DDP, FSDP, DeepSpeed), checkpoints, numerics, monitoring.

``speechlm train`` (``speechlm/bin/train.py``) builds a :class:`speechlm.train.trainer.Trainer`
from a :class:`speechlm.train.config.TrainConfig`; presets in ``speechlm/conf/train/*.yaml``.
"""
