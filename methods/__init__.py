"""Methods: text encoders and diffusion generators conditioned on scene graphs."""
