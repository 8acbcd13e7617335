"""cortex: multi-task neural trees and LaMBO-2 guided protein sequence design.

Importing cortex registers NeuralTreeConfig / NeuralTreeModel with AutoConfig / AutoModel ("neural_tree").
"""

from transformers import AutoConfig, AutoModel

from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel

__version__ = "0.1.0"

AutoConfig.register(NeuralTreeConfig.model_type, NeuralTreeConfig, exist_ok=True)
AutoModel.register(NeuralTreeConfig, NeuralTreeModel, exist_ok=True)

__all__ = ["NeuralTreeConfig", "NeuralTreeModel", "__version__"]
