"""The auxiliary models every domain can have: autoencoders for latent diffusion (``latent``) and
noise-aware classifiers for classifier guidance (``classifier``). Import from the modules; this
package imports nothing."""
