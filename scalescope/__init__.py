"""scalescope: declare, train and store families of small transformers; fit and check their laws."""

from .config import ConfigError, RunConfig
from .store import Store, StoreError, Tables, load

__version__ = "0.1.0"

__all__ = ["ConfigError", "RunConfig", "Store", "StoreError", "Tables", "load", "__version__"]
