"""Moved: the call context is in call_context.py, the interceptor in interceptor.py, logs in logs.py,
error mapping in error_mapping.py, `principal()` and the Authentication middleware in auth.py.

Kept only while a service still being rewritten (identity's servicer) imports it; it goes with that
import. New code imports from the modules above.
"""

from services.platform.auth import principal
from services.platform.call_context import current_call

__all__ = ["current_call", "principal"]
