"""Model hyper-parameters of every GLIP variant, as ml_collections ConfigDicts.

`glip_model(variant)` is the single source of truth for architecture sizes; the launchable configs
(`glip_t.py`, `glip_l.py`, `tiny.py`) embed it as `config.model`. Field names follow DESIGN.md §1.
"""
import ml_collections

# GLIP-T(A/B/C) differ only in fusion and data; GLIP-L in backbone size and tower depth.
VARIANTS = ("glip_t_a", "glip_t_b", "glip_t_c", "glip_l", "tiny")


def swin_t():
  return ml_collections.ConfigDict(dict(
      patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
      mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.2, out_indices=(1, 2, 3)))


def bert_base():
  return ml_collections.ConfigDict(dict(
      vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
      max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_dropout=0.1,
      attention_dropout=0.1, pad_token_id=0, word_embedding_init_std=0.02))


def glip_model(variant: str = "glip_t_c") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown GLIP variant {variant!r}; choose one of {VARIANTS}")
  m = ml_collections.ConfigDict()
  m.variant = variant
  m.swin = swin_t()
  m.language = bert_base()
  m.max_query_len = 256
  m.fpn = ml_collections.ConfigDict(dict(out_channels=256, drop_block_prob=0.3, drop_block_size=3))
  m.dyhead = ml_collections.ConfigDict(dict(
      num_layers=6, channels=256, group_norm_groups=16,
      fusion=variant != "glip_t_a",   # GLIP-T(A): DyConv only, no VLFuse and no tower BERT layers
      fusion_embed_dim=2048, fusion_heads=8, fusion_dropout=0.1, attn_clamp=50000.0,
      # Compute VLFuse with the visual projections folded into the text side (same function, far fewer FLOPs;
      # glipjax/models/dyhead.py BiMultiHeadAttention._folded); False: the official order of operations.
      fusion_fold_visual=True,
      layer_scale_init=1.0 / 6,      # official: 1 / num_layers
      # 'official' reproduces what GLIP's CUDA DCN reads for the coarser level (a prefix of the offset
      # buffer, fixture README §4.6); 'geometric' resizes the offsets to the coarse grid instead.
      dcn_offset_mode="official",
      # The deformable conv's sampling: "xla" (gathers XLA lowers, every backend) or "pallas" (a Triton kernel,
      # GPU only; the Pallas interpreter elsewhere, slow); same function (glipjax/models/dcn_pallas.py).
      dcn_impl="xla",
      dyrelu_reduction=4,
      offset_init="official",        # DCN offset conv: "official" (PyTorch default, random) or "zeros" (mmcv)
  ))
  m.head = ml_collections.ConfigDict(dict(
      num_classes=81,                # frozen, unused `cls_logits` conv with num_classes - 1 outputs
      joint_embed=256, log_scale_init=0.0, prior_prob=0.01, logit_clamp=50000.0,
      # Official USE_FUSED_FEATURES_DOT_PRODUCT: score the tower's (fused) text. Off (GLIP-T(A)): score the
      # language backbone's last layer x attention mask, so a padded token's logit is exactly bias0.
      use_fused_text=variant != "glip_t_a",
      # What scores regions against tokens (glipjax/models/glip.py ALIGNMENTS): "dot_product" (GLIP's default),
      # "contrastive" (official USE_CONTRASTIVE_ALIGN_LOSS alone) or "both"; the contrastive head's projection
      # width (official CONTRASTIVE_HIDDEN_DIM) and initial log temperature (MDETR's 0.07).
      alignment="dot_product", contrastive_align_dim=64, contrastive_log_scale_init=-2.659))
  m.anchors = ml_collections.ConfigDict(dict(sizes=(64, 128, 256, 512, 1024), strides=(8, 16, 32, 64, 128)))
  # Official ADD_LINEAR_LAYER (prompt tuning, `rpn.tunable_linear`): a zero-initialised [rows, hidden] table whose
  # first T rows are added to the text features before the head (1000 rows officially); 0: none.
  m.tunable_linear_rows = 0
  m.dtype = "float32"        # compute dtype ("bfloat16": softmax, norms, grounding logits stay float32)
  m.param_dtype = "float32"  # parameter (master weight) dtype
  m.scan_layers = False      # BERT layers, Swin block pairs, DyHead repeats stacked on a "layers" axis, run by lax.scan
  m.remat = "none"           # per transformer block / DyHead module: none|full|dots_saveable|
                             # dots_with_no_batch_dims_saveable (glipjax/models/layers.py REMAT_POLICIES)

  if variant == "glip_l":
    m.swin.update(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                  drop_path_rate=0.4)
    m.dyhead.update(num_layers=8, layer_scale_init=1.0 / 8)
  elif variant == "tiny":
    # Small enough to train on 2 CPU cores in minutes; every module type of GLIP-T(C) is kept.
    m.swin.update(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
    m.language.update(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                      max_position_embeddings=64)
    m.max_query_len = 64  # all 15 kinds of the embedded dataset fit one detection prompt
    m.fpn.update(out_channels=64, drop_block_prob=0.0)
    m.dyhead.update(num_layers=2, channels=64, fusion_embed_dim=256, fusion_heads=4,
                    layer_scale_init=0.5)
    m.head.update(joint_embed=64)
    m.anchors.update(sizes=(32, 64, 128, 256, 512))
  return m


def fixture_model(tiny_hparams: dict, yacs_cfg: dict | None = None) -> ml_collections.ConfigDict:
  """The model of a reference fixture folder (its config.json `tiny_hparams`, e.g. tiny_glip_t_c), with the
  variant read from the official config (`yacs_cfg`: EARLY_FUSE_ON, USE_FUSED_FEATURES_DOT_PRODUCT, NUM_CONVS,
  N_LAYERS) when given; without it GLIP-T(C)."""
  m = glip_model("glip_t_c")
  b = tiny_hparams["bert"]
  m.swin.update(embed_dim=tiny_hparams["swin_embed_dim"], depths=tuple(tiny_hparams["swin_depths"]),
                num_heads=tuple(tiny_hparams["swin_num_heads"]), window_size=tiny_hparams["swin_window_size"],
                mlp_ratio=float(tiny_hparams["swin_mlp_ratio"]))
  m.language.update(vocab_size=b["vocab_size"], hidden_size=b["hidden_size"], num_layers=b["num_hidden_layers"],
                    num_heads=b["num_attention_heads"], intermediate_size=b["intermediate_size"],
                    max_position_embeddings=b["max_position_embeddings"], type_vocab_size=b["type_vocab_size"],
                    layer_norm_eps=b["layer_norm_eps"])
  m.max_query_len = tiny_hparams["max_query_len"]
  c = tiny_hparams["channels"]
  n = tiny_hparams["dyhead_num_convs"]
  m.fpn.update(out_channels=c)
  m.dyhead.update(num_layers=n, channels=c, group_norm_groups=tiny_hparams["gn_groups"], layer_scale_init=1.0 / n)
  m.head.update(joint_embed=c)
  if yacs_cfg is not None:
    dyhead, fuse = yacs_cfg["MODEL"]["DYHEAD"], yacs_cfg["MODEL"]["DYHEAD"]["FUSE_CONFIG"]
    if yacs_cfg["MODEL"]["LANGUAGE_BACKBONE"].get("N_LAYERS", 1) != 1:
      raise ValueError("LANGUAGE_BACKBONE.N_LAYERS != 1 (a mean of several BERT layers) is not supported")
    if dyhead["NUM_CONVS"] != n:
      raise ValueError(f"DYHEAD.NUM_CONVS {dyhead['NUM_CONVS']} != tiny_hparams dyhead_num_convs {n}")
    m.dyhead.fusion = bool(fuse["EARLY_FUSE_ON"])
    m.head.use_fused_text = bool(fuse["USE_FUSED_FEATURES_DOT_PRODUCT"])
    m.variant = "glip_t_c" if m.dyhead.fusion else "glip_t_a"
  return m
