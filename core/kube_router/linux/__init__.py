"""Small Linux helpers shared by plugins: iptables-restore, ipset restore, sysctl, and the
netlink base the plugins' kernel codecs are built on.

No feature logic lives here; each helper runs the kernel's own tool with an argument list,
checks its status and reports its stderr, or (``netlink``) frames, sends and reads back the
messages a plugin's codec encodes.
"""
