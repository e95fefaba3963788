"""The flags of mindone's examples/diffusers/dreambooth/train_dreambooth.py and their defaults (shared by the CLI tests)."""

# Every flag of mindone's examples/diffusers/dreambooth/train_dreambooth.py with a value to pass
# (True: a switch). The script's own defaults are checked below.
REFERENCE_FLAGS = {
    "pretrained_model_name_or_path": "some/model", "revision": "main", "variant": "fp16", "tokenizer_name": "tok",
    "instance_data_dir": ".", "class_data_dir": "classes", "instance_prompt": "a photo of sks dog",
    "class_prompt": "a photo of a dog", "with_prior_preservation": True, "prior_loss_weight": 0.5,
    "num_class_images": 7, "output_dir": "out", "seed": 3, "resolution": 64, "center_crop": True,
    "train_text_encoder": True, "train_batch_size": 2, "sample_batch_size": 3, "num_train_epochs": 2,
    "max_train_steps": 9, "checkpointing_steps": 4, "checkpoints_total_limit": 2, "resume_from_checkpoint": "latest",
    "gradient_accumulation_steps": 2, "gradient_checkpointing": True, "learning_rate": 1e-4, "scale_lr": True,
    "lr_scheduler": "cosine", "lr_warmup_steps": 3, "lr_num_cycles": 2, "lr_power": 2.0, "dataloader_num_workers": 2,
    "enable_mindspore_data_sink": True, "use_8bit_adam": True, "adam_beta1": 0.8, "adam_beta2": 0.99,
    "adam_weight_decay": 0.02, "adam_epsilon": 1e-6, "max_grad_norm": 2.0, "push_to_hub": True, "hub_token": "t",
    "hub_model_id": "me/model", "logging_dir": "tb", "allow_tf32": True, "report_to": "none",
    "validation_prompt": "a sks dog", "num_validation_images": 2, "validation_steps": 5, "mixed_precision": "bf16",
    "prior_generation_precision": "fp16", "distributed": True, "enable_xformers_memory_efficient_attention": True,
    "set_grads_to_none": True, "offset_noise": True, "snr_gamma": 5.0, "pre_compute_text_embeddings": True,
    "tokenizer_max_length": 16, "text_encoder_use_attention_mask": True, "skip_save_text_encoder": True,
    "validation_images": ["a.png", "b.png"], "class_labels_conditioning": "timesteps",
    "validation_scheduler": "DDPMScheduler",
}
# The reference's defaults (its three required flags have none; here they default to the offline sample).
REFERENCE_DEFAULTS = {
    "revision": None, "variant": None, "tokenizer_name": None, "class_data_dir": None, "class_prompt": None,
    "with_prior_preservation": False, "prior_loss_weight": 1.0, "num_class_images": 100,
    "output_dir": "dreambooth-model", "seed": None, "resolution": 512, "center_crop": False,
    "train_text_encoder": False, "train_batch_size": 4, "sample_batch_size": 4, "num_train_epochs": 1,
    "max_train_steps": None, "checkpointing_steps": 500, "checkpoints_total_limit": None,
    "resume_from_checkpoint": None, "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
    "learning_rate": 5e-6, "scale_lr": False, "lr_scheduler": "constant", "lr_warmup_steps": 500, "lr_num_cycles": 1,
    "lr_power": 1.0, "dataloader_num_workers": 1, "enable_mindspore_data_sink": False, "use_8bit_adam": False,
    "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_weight_decay": 1e-2, "adam_epsilon": 1e-8, "max_grad_norm": 1.0,
    "push_to_hub": False, "hub_token": None, "hub_model_id": None, "logging_dir": "logs", "allow_tf32": False,
    "report_to": "tensorboard", "validation_prompt": None, "num_validation_images": 4, "validation_steps": 100,
    "mixed_precision": None, "prior_generation_precision": None, "distributed": False,
    "enable_xformers_memory_efficient_attention": False, "set_grads_to_none": False, "offset_noise": False,
    "snr_gamma": None, "pre_compute_text_embeddings": False, "tokenizer_max_length": None,
    "text_encoder_use_attention_mask": False, "skip_save_text_encoder": False, "validation_images": None,
    "class_labels_conditioning": None, "validation_scheduler": "DPMSolverMultistepScheduler",
}
