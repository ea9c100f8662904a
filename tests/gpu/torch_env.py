"""torch and transformers for the GPU checks' Python steps, or a skip."""


def load(prog, device):
    """(torch, AutoModelForCausalLM), or None after printing why prog skips
    (exit 77): either is missing, or device is cuda and torch sees no GPU."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"{prog}: skipped, needs torch and transformers ({e})")
        return None
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: skipped, torch sees no CUDA device")
        return None
    return torch, AutoModelForCausalLM
