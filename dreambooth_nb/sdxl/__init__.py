"""Chapter 09: Stable Diffusion XL. What SDXL adds (a second text encoder, a pooled text embedding, size and crop
conditioning), a toy-world SDXL derived from the toy-world SD model, and DreamBooth LoRA on it with the training
engine of chapters 04 and 08 (`python -m dreambooth_nb.train_sdxl_lora`)."""
