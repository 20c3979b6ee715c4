"""Training configuration nodes (the trainer itself comes with the Train LoRA node)."""

from ..core.choices import BETA_SCHEDULES, HUBER_SCHEDULES, LOSS_TYPES, LOSS_WEIGHTS, PREDICTIONS, TIMESTEP_SAMPLERS
from ..core.lora import INITS, UNET_PRESETS, VARIANTS


class LoRALabNoiseStrategy:
    DESCRIPTION = ("How training noises the latents and weighs the loss: beta schedule, timestep "
                   "sampling, loss weighting, prediction type, noise offset, multi-resolution noise, input "
                   "perturbation, zero-terminal-SNR, loss type (L2, L1, scheduled pseudo-Huber). The seeds' "
                   "noise-strategy experiments are combinations of these.")
    CATEGORY = "LoRA Lab/train"
    RETURN_TYPES = ("LL_NOISE",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("The noise strategy for Train LoRA.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "beta_schedule": (["model", *BETA_SCHEDULES], {"default": "model", "tooltip":
                              "model: the pipeline's own (its scheduler config; SD's is scaled_linear); "
                              "linear; scaled_linear (the seeds' 'quadratic'); cosine, over the model's "
                              "beta range. A pretrained model learned its own: another schedule changes "
                              "what each timestep means to it. The LoRA carries the schedule it trained "
                              "with, and Generate samples with it."}),
            "timestep_sampling": (list(TIMESTEP_SAMPLERS), {"default": "uniform", "tooltip":
                                  "uniform; snr: p(t) proportional to SNR(t)^snr_power (favours low "
                                  "noise / detail); high_noise: t >= split; low_noise: t < split; "
                                  "range: t_min..t_max; logit_normal: t = T*sigmoid(N(mean, std))."}),
            "loss_weighting": (list(LOSS_WEIGHTS), {"default": "mse", "tooltip":
                               "mse: plain; snr: SNR/(1+SNR); min_snr: min(SNR, gamma)/SNR = min(1, "
                               "gamma/SNR) (v: /(SNR+1), Hang et al. 2023); debiased: 1/sqrt(SNR) (kohya; "
                               "with epsilon, not with zero_terminal_snr, where SNR reaches 0)."}),
            "prediction": (["model", *PREDICTIONS], {"default": "model", "tooltip":
                           "What the model learns to predict: model = what the pipeline's scheduler "
                           "config says (epsilon for SD1.x/SDXL); epsilon; v_prediction. Carried in the "
                           "LoRA, so Generate samples a v-prediction LoRA as v-prediction."}),
        }, "optional": {
            "snr_power": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip":
                          "k of the snr sampler; 0.25 puts the median near t = 270 on SD's schedule."}),
            "split": ("INT", {"default": 500, "min": 1, "max": 999, "tooltip":
                      "Boundary of high_noise (t >= split) and low_noise (t < split)."}),
            "t_min": ("INT", {"default": 0, "min": 0, "max": 999, "tooltip": "First timestep of 'range'."}),
            "t_max": ("INT", {"default": 999, "min": 0, "max": 999, "tooltip": "Last timestep of 'range'."}),
            "logit_mean": ("FLOAT", {"default": 0.0, "min": -5.0, "max": 5.0, "step": 0.1,
                                     "tooltip": "Mean of logit_normal (0 = centred on t = 500)."}),
            "logit_std": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 5.0, "step": 0.1,
                                    "tooltip": "Spread of logit_normal."}),
            "min_snr_gamma": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 100.0, "step": 0.1,
                                        "tooltip": "gamma of min_snr (5 is the paper's default)."}),
            "noise_offset": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                             "Adds offset*N(0,1) per channel to the noise (darker darks, brighter "
                             "brights); 0.05-0.1 is common."}),
            "input_perturbation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "Perturbs the noise that builds x_t (not the target); 0.1 in Ning et al."}),
            "zero_terminal_snr": ("BOOLEAN", {"default": False, "tooltip":
                                  "Rescale betas so the last step is pure noise (Lin et al. 2023); "
                                  "best with v prediction; off keeps the model's setting. Generate then "
                                  "samples from the top timestep with rescaled CFG. SNR is 0 at the last "
                                  "step: min_snr weighs it 1 (epsilon) or 0 (v); debiased with epsilon is "
                                  "refused (1/sqrt(0))."}),
            "loss_type": (list(LOSS_TYPES), {"default": "l2", "tooltip":
                          "The loss per latent element (kohya's loss_type): l2 (squared error); l1; huber "
                          "(pseudo-Huber 2d(sqrt(x^2+d^2)-d): squared near 0, linear beyond d, robust to "
                          "outliers, Khrapov & Nagel 2024); smooth_l1 (huber / d). Then loss_weighting. "
                          "The validation loss stays plain MSE."}),
            "huber_schedule": (list(HUBER_SCHEDULES), {"default": "snr", "tooltip":
                               "The pseudo-Huber threshold d over timesteps: snr: (1-c)/(1+sigma_t)^2 + c (near 1 "
                               "for clean inputs, c for pure noise; kohya's default); exponential: c^(t/T); "
                               "constant: c."}),
            "huber_c": ("FLOAT", {"default": 0.1, "min": 0.001, "max": 1.0, "step": 0.001, "tooltip":
                        "c of the Huber schedule (kohya's huber_c, default 0.1)."}),
            "multires_noise_iterations": ("INT", {"default": 0, "min": 0, "max": 10, "tooltip":
                                          "Multi-resolution (pyramid) noise levels added to the noise; 0 = off; "
                                          "kohya suggests 6-10 (multires_noise_iterations)."}),
            "multires_noise_discount": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                        "Weight ratio between pyramid levels (kohya's multires_noise_discount, "
                                        "default 0.3; 0.1 is milder)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, loss_weighting=None, prediction=None, zero_terminal_snr=False):
        """Refuses, before anything runs, settings that cannot train. Linked inputs arrive as None and are
        checked when the node runs. Naming an input here turns off ComfyUI's own list check for it, so
        that check is repeated."""
        from ..core.noise import unsupported_combination

        for name, value, valid in (("loss_weighting", loss_weighting, LOSS_WEIGHTS),
                                   ("prediction", prediction, ("model", *PREDICTIONS))):
            if value is not None and value not in valid:
                return f"input '{name}' = {value!r} is not one of {', '.join(valid)}"
        if None in (loss_weighting, prediction, zero_terminal_snr) or prediction == "model":
            return True  # linked, or the model's prediction type: checked when the node runs
        return unsupported_combination(loss_weighting, prediction, bool(zero_terminal_snr)) or True

    def build(self, beta_schedule, timestep_sampling, loss_weighting, prediction, **options):
        from ..core.noise import NoiseStrategy

        if timestep_sampling == "range" and options.get("t_min", 0) > options.get("t_max", 999):
            raise ValueError(f"LoRA Lab: Noise Strategy: t_min ({options['t_min']}) is above t_max "
                             f"({options['t_max']})")
        try:
            return (NoiseStrategy(beta_schedule=beta_schedule, timestep_sampling=timestep_sampling,
                                  loss_weighting=loss_weighting, prediction=prediction, **options),)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: Noise Strategy: {e}") from None


class LoRALabLoRAConfig:
    DESCRIPTION = ("LoRA settings: rank and alpha (the update is scaled by alpha/rank), which UNet "
                   "modules get adapters, an optional text-encoder LoRA with its own rank, init, "
                   "dropout, and the DoRA / rsLoRA variants (via peft).")
    CATEGORY = "LoRA Lab/train"
    RETURN_TYPES = ("LL_LORA_CONFIG",)
    RETURN_NAMES = ("lora_config",)
    OUTPUT_TOOLTIPS = ("The LoRA configuration for Train LoRA.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "rank": ("INT", {"default": 8, "min": 1, "max": 512, "tooltip": "LoRA rank r."}),
            "alpha": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 1024.0, "step": 0.01, "tooltip":
                      "LoRA alpha; the update is scaled by alpha/rank (seed 002: alpha = 2*rank; "
                      "kohya's default 1; ComfyUI's trainer fixes 1)."}),
            "targets": (list(UNET_PRESETS), {"default": "attention", "tooltip":
                        "attention = to_q/to_k/to_v/to_out.0; attention+ff adds ff.net.0.proj and "
                        "ff.net.2 (seed 002); all_linear; all_linear+conv (LoCon): every Linear and Conv2d, "
                        "including conv_in, conv_out and time_embedding, which kohya sd-scripts (and UIs "
                        "loading through it) and diffusers <= 0.32 drop silently; all_linear+conv (kohya): "
                        "the same inside the attention/resnet/up-/downsampler blocks only, as kohya trains "
                        "LoCon, so the file loads the same everywhere; custom = the list below."}),
        }, "optional": {
            "custom_modules": ("STRING", {"default": "", "tooltip":
                               "For targets = custom: module name suffixes, comma-separated (e.g. to_q, to_v)."}),
            "train_unet": ("BOOLEAN", {"default": True, "tooltip": "Off = a text-encoder-only LoRA (seed 003)."}),
            "text_encoder_rank": ("INT", {"default": 0, "min": 0, "max": 512, "tooltip":
                                  "Rank of a text-encoder LoRA on q/k/v/out projections; 0 = none."}),
            "text_encoder_alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.01,
                                             "tooltip": "Its alpha; 0 = equal to its rank."}),
            "init": (list(INITS), {"default": "kaiming", "tooltip": "kaiming: Kaiming-uniform A, zero B "
                                   "(the LoRA paper); gaussian: Gaussian A, zero B."}),
            "dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.9, "step": 0.01,
                                  "tooltip": "Dropout on the LoRA branch input."}),
            "variant": (list(VARIANTS), {"default": "lora", "tooltip":
                        "lora; dora (weight-decomposed, Liu et al. 2024; ComfyUI 0.8 normalises by ||W|| where "
                        "peft uses ||W+dW||, so a DoRA LoRA looks different there: Apply LoRA's dora_norm = "
                        "comfyui shows it); rslora (scale alpha/sqrt(rank)); loha (LyCORIS LoHa: dW = "
                        "(A1 B1) * (A2 B2) elementwise, twice LoRA's parameters, rank up to r^2); lokr (LyCORIS "
                        "LoKr: dW = W1 kron W2, few parameters). Both scale by alpha/rank, take no dropout and "
                        "kaiming init only, save with LyCORIS keys (kohya layout only) and blend as a plain LoRA."}),
            "parameter_budget": ("INT", {"default": 0, "min": 0, "max": 10**10, "tooltip":
                                 "> 0: ignore the ranks and pick the one rank (shared by UNet and text encoders) "
                                 "whose trainable parameter count comes closest to this (seed 003: ~3,000,000)."}),
            "block_ranks": ("STRING", {"default": "", "tooltip":
                            "Rank per UNet block (kohya's block_dims), comma-separated key=value: down, mid, up, or "
                            "kohya block names IN01-IN11, MID, OUT00-OUT11 (SDXL: IN01-IN08, MID, OUT00-OUT08), "
                            "which override their group, e.g. 'down=4, mid=8, up=16, OUT11=0'. 0 = no adapter in "
                            "that block. conv_in, time_embedding, conv_out and text encoders keep 'rank'. Not with "
                            "parameter_budget."}),
            "block_alphas": ("STRING", {"default": "", "tooltip":
                             "Alpha per UNet block (kohya's block_alphas), the same keys, e.g. 'up=16, IN01=2'. A "
                             "block not named keeps 'alpha' (scaled alpha/its own rank)."}),
            "block_lr_weights": ("STRING", {"default": "", "tooltip":
                                 "Learning-rate multiplier per UNet block (kohya's down/mid/up_lr_weight), the same "
                                 "keys, e.g. 'down=0.5, mid=1, up=2'. 0 freezes a block: as in kohya it then gets "
                                 "no adapter (one frozen at its zero init changes nothing)."}),
        }}

    def build(self, rank, alpha, targets, custom_modules="", train_unet=True, text_encoder_rank=0,
              text_encoder_alpha=0.0, init="kaiming", dropout=0.0, variant="lora", parameter_budget=0,
              block_ranks="", block_alphas="", block_lr_weights=""):
        from ..core.lora import LoRAConfigSpec

        custom = tuple(m.strip() for m in custom_modules.split(",") if m.strip())
        if targets == "custom" and not custom:
            raise ValueError("LoRA Lab: LoRA Config: targets = 'custom' needs module names in 'custom_modules'")
        if not train_unet and text_encoder_rank == 0:
            raise ValueError("LoRA Lab: LoRA Config: nothing to train (train_unet is off and text_encoder_rank is 0)")
        try:  # LoRAConfigSpec checks its inputs (variant combinations, block settings)
            return (LoRAConfigSpec(rank, alpha, targets, custom, text_encoder_rank, text_encoder_alpha, train_unet,
                                   init, dropout, variant, parameter_budget, block_ranks, block_alphas,
                                   block_lr_weights),)
        except ValueError as e:
            raise ValueError(f"LoRA Lab: LoRA Config: {e}") from None


NODE_CLASS_MAPPINGS = {"LoRALabNoiseStrategy": LoRALabNoiseStrategy, "LoRALabLoRAConfig": LoRALabLoRAConfig}
NODE_DISPLAY_NAME_MAPPINGS = {"LoRALabNoiseStrategy": "LoRA Lab: Noise Strategy",
                              "LoRALabLoRAConfig": "LoRA Lab: LoRA Config"}
