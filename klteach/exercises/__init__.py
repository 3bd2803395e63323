"""Exercise checkers: each ``check_*`` takes the student's answer, compares it with the library
and says in words what is wrong (or prints that it is right). One module per chapter."""
from .ch1 import *  # noqa: F401,F403
from .ch2 import *  # noqa: F401,F403
from .ch3 import *  # noqa: F401,F403
from .ch4 import *  # noqa: F401,F403
from .ch5 import *  # noqa: F401,F403
from .ch6 import *  # noqa: F401,F403
