"""The model zoo: `create_model`, `list_models`, `register_model`."""

from deploybench.models.registry import count_params, create_model, get_model_info, list_models, register_model

__all__ = ["count_params", "create_model", "get_model_info", "list_models", "register_model"]
