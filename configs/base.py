"""Defaults shared by every launchable config: model, data, optimisation, training, evaluation, checkpoints, mesh.

Launchable configs (`glip_t.py`, `glip_l.py`, `tiny.py`) call `get_config(model=...)` and override values.
Every key that exists is here; `--config.x.y=z` on an unknown key is an error.
"""
import ml_collections

from configs import model as model_lib


def get_config(model: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model if model is not None else model_lib.glip_model("glip_t_c")

  # Data (glipjax/data/pipeline.py): prepared TFDS datasets (python -m glipjax.data.prepare) under `data_dir`,
  # mixed by weight: sources=(("o365", 1.0), ("goldg", 1.0)). "synthetic_grounding[/tiny]" is the embedded
  # default, built on first use. `eval_source`: the dataset evaluated (its validation split); "" = the first.
  # Multi-scale training on static shapes (glipjax/data/buckets.py): each batch draws one of `train_short_sides`
  # and holds images of one `aspect_buckets` canvas shape (width / height), so a run compiles
  # len(train_short_sides) * len(aspect_buckets) train steps. With these, 8 shapes and about 9% padding on
  # COCO-like images (benchmarks/padding.py) against 68% on one 1344x1344 canvas. Empty `aspect_buckets`: every
  # batch on `canvas`, a scale drawn per image.
  c.data = ml_collections.ConfigDict(dict(
      sources=(("synthetic_grounding", 1.0),), eval_source="", data_dir="runs/tfds",
      train_short_sides=(480, 576, 672, 800), aspect_buckets=(0.75, 1.333), max_size=1333,
      eval_short_side=800, canvas=(1344, 1344), flip_prob=0.5, max_boxes=100, max_phrases=100, num_workers=0,
      tokenizer="wordpiece", tokenizer_path="",   # a vocab.txt (wordpiece) or a .model (sentencepiece)
      sentencepiece_vocab_size=0,                  # > 0: train a sentencepiece model on the captions first
      # Training prompts (glipjax/data/prompting.py): this share of examples gets a detection prompt (the
      # categories present + sampled negatives, GLIP's O365 recipe), the rest their caption.
      detection_prompt_prob=0.5, max_negatives=85,
      # > 0: each caption example is followed by 1..caption_negatives names of categories absent from the image
      # (phrases that ground nothing), so that captions teach the model to read words too.
      caption_negatives=0,
      # > 0: few-shot training (the ODinW protocol, glipjax/data/few_shot.py): each training source reduced to
      # k images per category, drawn with the run's `seed` (a sweep over seeds draws different samples).
      few_shot=0,
      # True: every training example is prompted with all categories in order, as evaluation prompts them
      # (prompt tuning and GLIP's ODinW fine-tuning); captions are not used.
      fixed_prompt=False,
  ))

  # Official recipe: AdamW, language backbone lr x0.1, no decay on biases/norms, warmup + step decay.
  # Parameter groups are regular expressions over parameter paths ("language_backbone/encoder/layer/0/...",
  # "head/bias0"; glipjax/optim.py): a parameter trains when it fully matches a `trainable` pattern and no
  # `frozen` one (frozen ones get no gradient and no optimizer state); `lr_multipliers`: the first matching
  # (pattern, factor) scales its learning rate. `train.mode` edits these (glipjax/modes/).
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, weight_decay=1e-4, b1=0.9, b2=0.999,
      warmup_steps=2000, schedule="multistep", decay_at=(0.67, 0.89), decay_factor=0.1,   # or cosine, constant
      trainable=(".*",), frozen=("head/cls_logits/.*",),  # the official head's unused 80-way classifier
      lr_multipliers=(("language_backbone/.*", 0.1),),
      grad_clip_norm=1.0, ema_decay=0.0))   # ema_decay > 0 keeps EMA params (official 0.999) and evaluates them

  c.train = ml_collections.ConfigDict(dict(
      # What trains (glipjax/modes/): full | prompt_tuning | linear_probe | frozen_language.
      mode="full",
      # Where the parameters start when the workdir has no checkpoint to resume (then a fresh optimizer at step
      # 0): `init_from` = a glipjax workdir or checkpoint folder (<run>, <run>/best, <run>/checkpoints/5000) or an
      # official GLIP checkpoint file (.pth/.pt/.safetensors); then `init_language_from` = an HF BERT checkpoint
      # directory (config.json + model.safetensors) and `init_backbone_from` = an HF Swin directory or a Swin
      # classification checkpoint (.pth, the Swin repository's); the rest from the initialisers (glipjax/warm_start.py).
      init_from="", init_language_from="", init_backbone_from="",
      global_batch_size=64, num_steps=100_000, log_every=50, checkpoint_every=1000,
      eval_every=5000,  # and at the end; 0 = never
      focal_alpha=0.25, focal_gamma=2.0, reg_loss_weight=2.0,
      # The alignment losses besides the token focal loss (glipjax/ops/losses.py): the contrastive alignment loss's
      # weight (with model.head.alignment "contrastive" or "both") and a CLIP-style image-text contrastive loss
      # on pooled features (> 0: on) with its fixed temperature.
      contrastive_align_weight=1.0, image_text_loss_weight=0.0, image_text_temperature=0.07,
      grad_accum_steps=1,            # > 1: the global batch is split into this many micro-batches per update
      peak_flops_per_device=0.0,     # for MFU; 0 = look the device kind up in glipjax/perf.py's table
      profile_start_step=-1,         # >= 0: write a profiler trace of `profile_num_steps` steps from this step
      profile_num_steps=3))          # (touching <workdir>/PROFILE also starts one, at the next log step)

  # `benchmarks`: the papers' protocols run at every evaluation besides the eval_source's own (glipjax/evaluators/
  # benchmark.py), each (dataset, protocol[, split]) or a dict with `annotations` / `flickr_entities`, e.g.
  # (("lvis_minival", "lvis"),); logged as "<dataset>/<metric>", which `checkpoint.best_metric` may name. LVIS:
  # the categories prompted in chunks of 40, 300 detections per image (GLIP's), or fixed AP (no per-image cap,
  # `lvis_max_dets_per_category` over the split). Flickr30k: "merged boxes" mode (one union box per phrase).
  c.eval = ml_collections.ConfigDict(dict(
      global_batch_size=8, pre_nms_thresh=0.05, pre_nms_top_n=1000, nms_thresh=0.6, detections_per_img=100,
      num_pictures=8, picture_score_thresh=0.3, benchmarks=(),
      lvis_categories_per_prompt=40, lvis_detections_per_img=300, lvis_fixed_ap=False,
      lvis_max_dets_per_category=10_000, flickr_merge_boxes=False))

  # keep the newest `max_to_keep`; with `best_metric` (an eval metric, e.g. "detection/AP") also the best parameters so far
  # in <workdir>/best. SIGTERM (preemption) saves at the next step and exits cleanly.
  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3, async_save=True, best_metric="detection/AP"))

  # Mesh (glipjax/sharding.py): axis sizes within a slice / host group (-1 = the rest) times `dcn_shape` across
  # slices / hosts. `rules` map the logical axes of parameters (glipjax/models/layers.py) and of activations
  # (`sharding.constrain`) to mesh axes, MaxText-style: FSDP shards every weight along its model width (embed,
  # conv_in), so parameters and optimizer moments are split over "fsdp"; tensor parallelism splits attention
  # heads, MLP hidden units, vocabulary rows and conv output channels over "tensor"; the batch is split over
  # "data" and "fsdp". Parallelism is a config change only, e.g. --config.mesh.shape="(1,4,2)".
  c.mesh = ml_collections.ConfigDict(dict(
      axes=("data", "fsdp", "tensor"), shape=(-1, 1, 1), dcn_shape=(1, 1, 1),
      rules=(("embed", "fsdp"), ("conv_in", "fsdp"),
             ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"), ("conv_out", "tensor"),
             ("norm", None),
             ("batch", ("data", "fsdp")), ("length", None), ("height", None), ("width", None)),
      batch_axes=("data", "fsdp")))   # the input batch's sharding: must agree with the "batch" rule
  return c
