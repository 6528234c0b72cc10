"""egg: Entropy-Gradient Grounding for vision-language models."""
