"""The paper's method, and nothing model-specific (docs/method.md sections 1-4).

objectives -> relevance (the entropy-gradient map) -> regions (smoothing, thresholds,
components, ranking) -> boxes (geometry between frames) -> stopping (rules) -> zoom (the
loop) -> result (``Grounding``, ``Iteration``). Modules are imported on use, so that
adapters can import ``boxes`` without loading the loop.
"""
