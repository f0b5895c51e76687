"""A1111's ``modules.options`` (``OptionInfo``, ``options_section``) for extensions; see ``modules.a1111_compat``."""

from modules.a1111_compat.options import OptionInfo, Options, options_section  # noqa: F401
