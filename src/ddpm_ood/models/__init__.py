"""A model, from a file to an eps function: the UNet (``unet``) and its YAML configs (``config``),
image and model spaces and a model's identity (``spaces``), our model files (``model_file``), a
latent model's first stage (``first_stage``), other sources (``diffusers_models``, ``monai_models``)
and the one loader every detector gets its model from (``loading``: ``load_model``)."""
