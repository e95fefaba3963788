"""Chapter 03 (the objective): denoising loss on the subject plus lambda x the prior-preservation loss."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .common.config import TrainConfig
from .models import Components, add_noise, alphas_cumprod
from .common.errors import InputError


def per_example_mse(pred: ms.Tensor, target: ms.Tensor) -> ms.Tensor:
    """Mean squared error of each example, shape (B,)."""
    return ((pred.astype(ms.float32) - target.astype(ms.float32)) ** 2).mean(axis=(1, 2, 3))


def dreambooth_loss(pred: ms.Tensor, target: ms.Tensor, weights: ms.Tensor, with_prior: bool,
                    prior_loss_weight: float) -> tuple[ms.Tensor, ms.Tensor, ms.Tensor]:
    """(total, instance term, prior term) for a batch whose second half holds the class examples when with_prior.

    loss = mean_i w_i ||pred_i - target_i||^2 over instance examples
         + prior_loss_weight * mean_j w_j ||pred_j - target_j||^2 over class examples.
    """
    errors = per_example_mse(pred, target) * weights
    if not with_prior:
        return errors.mean(), errors.mean(), ops.zeros((), ms.float32)
    instance, prior = ops.chunk(errors, 2, axis=0)
    instance_loss, prior_loss = instance.mean(), prior.mean()
    return instance_loss + prior_loss_weight * prior_loss, instance_loss, prior_loss


def snr_weights(alphas_cumprod: ms.Tensor, timesteps: ms.Tensor, snr_gamma: float, v_prediction: bool) -> ms.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR (or / (SNR + 1) for v)."""
    a = alphas_cumprod[timesteps]
    snr = a / (1.0 - a)
    clipped = ops.minimum(snr, ops.full_like(snr, snr_gamma))
    return clipped / (snr + 1.0) if v_prediction else clipped / snr


class DreamBoothLoss(nn.Cell):
    """Forward pass of one DreamBooth batch: encode, noise, predict, compare.

    Returns (loss, instance term, prior term): training differentiates the first and reports all three.
    """

    terms = ("loss", "instance_loss", "prior_loss")

    def __init__(self, unet, vae, text_encoder, alphas_cumprod, scaling_factor: float,
                 prediction_type: str = "epsilon", with_prior: bool = False, prior_loss_weight: float = 1.0,
                 snr_gamma: float | None = None, train_text_encoder: bool = False,
                 use_attention_mask: bool = False, class_labels_conditioning: str | None = None):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"Unknown prediction_type {prediction_type!r} in the scheduler config.")
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.alphas_cumprod = ms.Tensor(alphas_cumprod, ms.float32)
        self.scaling_factor = scaling_factor
        self.v_prediction = prediction_type == "v_prediction"
        self.with_prior, self.prior_loss_weight = with_prior, prior_loss_weight
        self.snr_gamma = snr_gamma
        self.train_text_encoder = train_text_encoder
        self.use_attention_mask = use_attention_mask
        self.timestep_labels = class_labels_conditioning == "timesteps"
        self.vae_dtype = next(iter(vae.get_parameters())).dtype if vae is not None else ms.float32

    def latents(self, pixels, vae_noise):
        """Sample VAE latents with the given noise (host-made, so a step is reproducible)."""
        if self.vae is None:
            return pixels
        moments = self.vae.encode(pixels.astype(self.vae_dtype))[0].astype(ms.float32)
        mean, logvar = ops.chunk(moments, 2, axis=1)
        std = ops.exp(0.5 * ops.clamp(logvar, -30.0, 20.0))
        return ops.stop_gradient((mean + std * vae_noise) * self.scaling_factor)

    def embeddings(self, input_ids, attention_mask):
        if self.text_encoder is None:  # pre-computed: input_ids already holds the embeddings
            return input_ids
        mask = attention_mask if self.use_attention_mask else None
        hidden = self.text_encoder(input_ids, attention_mask=mask)[0]
        return hidden if self.train_text_encoder else ops.stop_gradient(hidden)

    def construct(self, pixels, input_ids, attention_mask, vae_noise, noise, timesteps):
        latents = self.latents(pixels, vae_noise)
        a = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        noisy = add_noise(latents, noise, a)
        labels = timesteps if self.timestep_labels else None
        pred = self.unet(noisy, timesteps, self.embeddings(input_ids, attention_mask),
                         class_labels=labels, return_dict=False)[0]
        return self.objective(pred, latents, noise, a, timesteps)

    def objective(self, pred, latents, noise, a, timesteps):
        """(loss, instance term, prior term) of a prediction: the noise (or velocity) it should have been."""
        if pred.shape[1] == 2 * latents.shape[1]:  # models that also predict variance
            pred = ops.chunk(pred, 2, axis=1)[0]
        target = ops.sqrt(a) * noise - ops.sqrt(1.0 - a) * latents if self.v_prediction else noise
        if self.snr_gamma is None:
            weights = ops.ones(timesteps.shape, ms.float32)
        else:
            weights = snr_weights(self.alphas_cumprod, timesteps, self.snr_gamma, self.v_prediction)
        return dreambooth_loss(pred, target, weights, self.with_prior, self.prior_loss_weight)


def loss_network(config: TrainConfig, components: Components, precomputed: bool = False) -> DreamBoothLoss:
    """The DreamBoothLoss Cell for these components and settings (the trainer's, and chapter 03's)."""
    sched = components.noise_scheduler
    return DreamBoothLoss(
        components.unet, components.vae, None if precomputed else components.text_encoder,
        alphas_cumprod(sched), components.vae.config.scaling_factor if components.vae is not None else 1.0,
        sched.config.prediction_type, config.with_prior_preservation, config.prior_loss_weight,
        config.snr_gamma, config.train_text_encoder, config.text_encoder_use_attention_mask,
        config.class_labels_conditioning,
    )
