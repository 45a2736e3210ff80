"""The diffusion process: noise schedules and flow paths (``schedule``, ``paths``, ``schedules``),
the SDE view (``sde``), what the network predicts (``parameterization``), training times
(``timesteps``), losses (``loss``), the denoiser (``denoiser``), the diffusion objective
(``diffusion``) with its presets (``presets``), exact Gaussian mixtures (``gaussian``) and
likelihoods (``likelihood``). Import from the modules; this package imports nothing."""
