"""Audio domain: 1-D waveform U-Net diffusion on WAV / FLAC / OGG audio.

``AudioDomain`` is registered through the ``diffuse.domains`` entry point as ``audio``.
"""

from .data import AudioDataset, load_audio_folder, load_bundled
from .backbones import MODEL_PRESETS
from .domain import AudioDomain
from .metrics import log_mel_l1, multi_resolution_stft, set_metrics
from .unet import UNet1D

__all__ = ["AudioDomain", "AudioDataset", "UNet1D", "MODEL_PRESETS", "load_audio_folder", "load_bundled",
           "multi_resolution_stft", "log_mel_l1", "set_metrics"]
