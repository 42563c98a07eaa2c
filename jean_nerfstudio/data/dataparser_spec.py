"""The `jean-data` dataparser entry point, kept in its own light module.

(Importing it from the method-config module would create a circular import during nerfstudio's plugin discovery.)
"""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from jean_nerfstudio.data.dataparser import JeanDataParserConfig

jean_dataparser = DataParserSpecification(
    config=JeanDataParserConfig(),
    description="A talking-head clip processed by `jean-process` (cameras, masks, audio and expression features).",
)
