"""`train.mode=linear_probe`: only the grounding head's last layers train — the box and centerness predictors,
their per-level scales, the text projection and logit biases of the dot-product head (and the contrastive
projections when the model has them). Encoders, FPN and the DyHead tower are frozen. GLIP compares it with prompt
tuning (the paper's linear probing)."""

HEAD_PREDICTORS = ("head/(bbox_pred|centerness|scales|dot_product_projection_text|log_scale|bias_lang|bias0|"
                   "contrastive_align_projection_image|contrastive_align_projection_text|contrastive_log_scale)"
                   "(/.*)?",)


def configure(config) -> None:
  config.optim.trainable = HEAD_PREDICTORS
