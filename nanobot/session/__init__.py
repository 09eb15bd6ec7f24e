"""Sessions (conversation histories) and the conversation locks that serialise their turns."""

from nanobot.session.locks import ConversationLockManager, LocalConversationLockManager, LockLease
from nanobot.session.manager import Session, SessionManager

__all__ = ["ConversationLockManager", "LocalConversationLockManager", "LockLease", "Session", "SessionManager"]
