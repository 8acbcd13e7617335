"""cortex: multi-task neural trees and LaMBO-2 guided protein sequence design."""

__version__ = "0.1.0"
