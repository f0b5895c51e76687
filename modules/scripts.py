"""A1111's ``modules.scripts`` for extensions: an adapter, see ``modules.a1111_compat``."""

from modules.a1111_compat.scripts import (  # noqa: F401 - the names A1111 extensions import
    AlwaysVisible,
    PostprocessBatchListArgs,
    PostprocessImageArgs,
    Script,
    basedir,
)
