"""attn_tutorial: the companion package of the book *Attention, from intuition to translation*.

The package is flat: one module per idea, each with its own ``__all__``, every public name
reachable here as ``attn_tutorial.NAME``. Conventions used everywhere:

* batch first; heads are their own dimension: ``(batch, heads, seq, d_head)``;
* boolean masks, ``True`` = *may attend* (PyTorch's ``scaled_dot_product_attention`` convention);
* attention functions and modules return ``(output, weights)``.

``import attn_tutorial`` loads torch and the model code only (:data:`EAGER`); data, training,
decoding, metrics, plots and widgets are imported the first time one of their names is used
(:pep:`562`), so a command-line start does not pay for matplotlib, ipywidgets or sacreBLEU.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: Every module's public names (its ``__all__``; ``tests/test_package.py`` checks the two agree).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "errors": ("UserError", "DamagedFileError", "TrainingDivergedError", "BUG_REPORT_URL",),
    "runtime": ("amp_settings", "DATA_ENV_VAR", "set_seed", "default_device", "autocast_dtype", "repo_root", "data_dir", "atomic_write_bytes",),
    "tokens": ("PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "PAD_TOKEN", "BOS_TOKEN", "EOS_TOKEN", "UNK_TOKEN", "SPECIAL_TOKENS", "TextTokenizer", "CharVocab", "SubwordTokenizer", "train_bpe",),
    "attention": ("masked_softmax", "scaled_dot_product_attention", "fused_attention", "causal_mask", "padding_mask", "key_padding_to_attn_mask", "select_positions", "sliding_window_mask", "gaussian_window", "local_m_mask", "local_p_weights", "DotProductScore", "ScaledDotProductScore", "AdditiveScore", "GeneralScore", "CosineScore", "LocationScore", "Attention", "LocalPAttention",),
    "multihead": ("MultiHeadAttention", "num_parameters",),
    "positional": ("sinusoidal_encoding", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding", "relative_shift_matrix", "rope_angles", "apply_rope", "alibi_slopes", "alibi_bias",),
    "efficient": ("tiled_attention", "tiled_attention_forward", "GroupedQueryAttention", "repeat_kv", "append_kv", "reorder_kv", "kv_cache_bytes_per_token", "kv_cache_nbytes", "peak_tensor_bytes", "sliding_window_global_mask", "sliding_window_attention", "elu_feature_map", "linear_attention", "LinearAttentionState", "linear_attention_step", "CausalLMConfig", "TinyCausalLM",),
    "seq2seq": ("Seq2SeqConfig", "Seq2SeqState", "Seq2Seq", "Encoder", "BahdanauDecoder", "LuongDecoder", "PlainDecoder", "gru_cell",),
    "transformer": ("TransformerConfig", "TransformerState", "AttentionMaps", "EncoderLayer", "DecoderLayer", "Transformer",),
    "tasks": ("DATES_SPLITS", "DateFormat", "DATE_FORMATS", "DATE_MIN", "DATE_MAX", "DATE_ALPHABET", "expand_two_digit_year", "format_date", "make_date_pairs", "date_vocab", "CharTaskSplits", "date_dataset", "make_reversal_pairs", "reversal_dataset",),
    "multi30k": ("MULTI30K_SPLITS", "MULTI30K_LANGS", "MULTI30K_SIZES", "MULTI30K_SHA256", "MULTI30K_URL", "ChecksumError", "DOWNLOAD_ATTEMPTS", "multi30k_path", "read_multi30k", "load_multi30k",),
    "batching": ("DEFAULT_MAX_LEN", "Batch", "collate", "token_budget_batches", "BatchIterator",),
    "decoding": ("DecoderState", "IncrementalDecoder", "DecodeResult", "decode_length_limits", "length_penalty", "greedy_decode", "beam_search", "MarkovTableModel",),
    "losses": ("label_smoothed_cross_entropy", "token_cross_entropy", "evaluate_loss",),
    "train": ("History", "TrainEvent", "lr_at", "fit",),
    "checkpoint": ("CHECKPOINT_JSON", "Checkpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "average_checkpoints", "export_fp16", "load_exported",),
    "resume": ("TrainingState",),
    "distributed": ("init_distributed",),
    "configs": ("SCHEDULES", "TrainConfig", "DATASETS", "TOKENIZER_KINDS", "MODEL_KINDS", "DataSpec", "TokenizerSpec", "Recipe", "RECIPES", "get_recipe", "list_recipes", "apply_overrides", "parse_override", "build_model",),
    "pretrained": ("MODEL_FILE", "TOKENIZER_FILE", "CARD_FILE", "pretrained_root", "list_pretrained", "resolve_model_dir", "save_tokenizer", "load_tokenizer", "read_card", "load_pretrained", "translate_sentences", "DEFAULT_LENGTH_PENALTY_ALPHA", "card_length_penalty", "MODEL_FORMAT_VERSION", "model_position_limit", "split_for_model",),
    "run": ("TrainRequest", "train_recipe", "load_split", "SHIP_MAX_BYTES",),
    "metrics": ("BLEUScore", "corpus_bleu", "bleu_signature", "LengthBucket", "bleu_by_length", "length_buckets", "SystemBootstrap", "PairedBootstrap", "paired_bootstrap",),
    "cards": ("CardSummary", "card_summary", "describe_card", "results_table", "load_test_outputs", "load_experiment", "OUTPUTS_DIR", "TEST_SPLITS", "COMPARISON_ALPHA",),
    "kernel_regression": ("KERNELS", "gaussian_kernel", "boxcar_kernel", "epanechnikov_kernel", "target_function", "make_regression_data", "nadaraya_watson", "average_pooling", "leave_one_out_mask", "NadarayaWatson", "FitHistory", "fit_bandwidth",),
    "numpy_ref": ("np_softmax", "np_masked_softmax", "np_scaled_dot_product_attention", "np_multi_head_attention", "np_tiled_attention",),
    "plotting": ("to_numpy", "plot_attention_heatmap", "plot_kernel_regression", "plot_weights_over_keys", "plot_loss_curve", "plot_mask", "plot_scaling", "plot_qkv_sources", "plot_attention_heads", "plot_positional_encoding", "plot_metric_vs_length",),
    "widgets": ("Explorer", "kernel_regression_explorer", "temperature_explorer", "mask_explorer", "self_cross_explorer", "head_explorer", "sliding_window_explorer", "positional_encoding_explorer",),
    "attention_explorer": ("ATTENTION_KINDS", "TranslationAttention", "translate_with_attention", "transformer_attention_explorer",),
}

#: The modules ``import attn_tutorial`` loads at once: torch and the model code.
EAGER = ("errors", "runtime", "tokens", "attention", "multihead", "positional", "efficient", "seq2seq", "transformer")

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)

try:
    __version__ = version("attn-tutorial")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    """``attn_tutorial.NAME`` for a name of a module not imported yet: import it, then cache the name."""
    module = _WHERE.get(name)
    if module is None:
        if name in _EXPORTS:  # a submodule: attn_tutorial.metrics
            return import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_EXPORTS})


for _module in EAGER:
    for _name in _EXPORTS[_module]:
        globals()[_name] = getattr(import_module(f".{_module}", __name__), _name)
del _module, _name
