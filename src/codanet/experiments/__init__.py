"""The paper's DAU experiments on real MNIST digits (Fig. 2 and Fig. 3)."""
