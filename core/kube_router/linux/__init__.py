"""Small Linux helpers shared by plugins: iptables-restore, ipset restore, sysctl.

No feature logic lives here; each helper runs the kernel's own tool with an argument list,
checks its status and reports its stderr.
"""
