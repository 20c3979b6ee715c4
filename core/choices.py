"""Choice lists that node declarations show at ComfyUI start-up, kept apart from the modules that
implement them so that declaring a node imports no torch."""

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
TIMESTEP_SAMPLERS = ("uniform", "snr", "high_noise", "low_noise", "range", "logit_normal")
LOSS_WEIGHTS = ("mse", "snr", "min_snr", "debiased")
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")  # the pointwise loss (kohya's loss_type)
HUBER_SCHEDULES = ("snr", "exponential", "constant")  # the pseudo-Huber threshold over timesteps
PREDICTIONS = ("epsilon", "v_prediction")
OPTIMIZERS = ("adamw", "adam", "sgd", "prodigy", "adafactor", "adamw_8bit", "adamw_schedulefree")
LR_SCHEDULES = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")
LCM_LOSSES = ("huber", "l2")
DORA_NORMS = ("peft", "comfyui")  # how Apply LoRA normalises a DoRA weight (core/lora_files.dora_weight)
