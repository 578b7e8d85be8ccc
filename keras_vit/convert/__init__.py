"""Foreign checkpoints -> Keras variables. `timm` is the canonical key space; other formats
(Hugging Face, big_vision .npz) are renamed into it first."""
