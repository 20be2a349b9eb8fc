from simmoe.models.catalog import CATALOG, get_model, list_models
from simmoe.models.spec import BYTES_PER_PARAM, ModelSpec

__all__ = ["BYTES_PER_PARAM", "CATALOG", "ModelSpec", "get_model", "list_models"]
