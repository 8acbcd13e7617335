"""cortex.model: the HF-native NeuralTree family (configuration, model, node types)."""

from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel, NeuralTreeOutput

__all__ = ["NeuralTreeConfig", "NeuralTreeModel", "NeuralTreeOutput"]
