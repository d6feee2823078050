from lhama.model.args import ModelArgs, RopeScaling, swiglu_hidden_dim
from lhama.model.configs import CONFIGS, NamedConfig, get_config
from lhama.model.kv_cache import AttentionCache, StaticKVCache, causal_attention, kv_cache_dtype
from lhama.model.transformer import Transformer, build_model

__all__ = [
    "ModelArgs",
    "RopeScaling",
    "swiglu_hidden_dim",
    "CONFIGS",
    "NamedConfig",
    "get_config",
    "AttentionCache",
    "StaticKVCache",
    "causal_attention",
    "kv_cache_dtype",
    "Transformer",
    "build_model",
]
