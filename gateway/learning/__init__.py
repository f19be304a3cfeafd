"""Training, evaluating and improving the router's quality predictor: offline, never on the request path.

Nothing here is imported by the gateway; its dependencies (numpy, scikit-learn, matplotlib) are the
optional extra `train`.
"""
