"""Names that a saved `config.json` carries, shared by the import hook (`autoregister`, which
must not import transformers) and the modules that write and read them."""

# `model_type` of a Hugging Face model saved after `extmem.hf.add_memory` (its own model type
# is kept under BASE_TYPE_KEY), and the line of config.json that says how to load a model.
AUGMENTED_TYPE = "extmem_augmented"
BASE_TYPE_KEY = "extmem_base_model_type"
LOAD_KEY = "extmem_load"
VERSION_KEY = "extmem_version"
