"""What the machine's rules draw: sessions, slot picks and commands.

Shared by several rule groups (and the run, which learns which of the known
commands the app has), so they live apart from any one group.
"""

from __future__ import annotations

from hypothesis import strategies as st

SESSIONS = st.sampled_from([None, None, "s1", "s2"])
SLOT_PICKS = st.integers(0, 7)
KNOWN_COMMANDS = frozenset({"ping", "echo", "sleep", "fail", "garbage", "crash", "hang",
                            "create_program", "list_programs"})
COMMANDS = st.sampled_from(["ping", "echo", "echo", "sleep", "fail", "garbage", "crash", "hang",
                            "create_program", "list_programs", "list_programs"])
