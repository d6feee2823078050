"""Scaling out: tensor parallelism over torch.distributed, Ray data parallelism and replicas,
and deployment planning (``lhama plan``)."""
