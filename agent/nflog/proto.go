package nflog

// Values from the kernel's uapi headers linux/netfilter/nfnetlink_log.h,
// linux/netfilter/nfnetlink.h and linux/netlink.h. Names follow the kernel's
// so that a reader can grep for them there.

// Message types of the NFNL_SUBSYS_ULOG subsystem (enum nfulnl_msg_types).
const (
	nfulnlMsgPacket = 0 // NFULNL_MSG_PACKET: kernel -> user, one logged packet
	nfulnlMsgConfig = 1 // NFULNL_MSG_CONFIG: user -> kernel, instance configuration
)

// nlmsgPacket is the netlink message type of a logged packet:
// NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET.
const nlmsgPacket = 4<<8 | nfulnlMsgPacket

// Configuration attributes (enum nfulnl_attr_config).
const (
	nfulaCfgCmd     = 1 // NFULA_CFG_CMD: struct nfulnl_msg_config_cmd { __u8 command; }
	nfulaCfgMode    = 2 // NFULA_CFG_MODE: struct nfulnl_msg_config_mode (packed, 6 bytes)
	nfulaCfgNlbufsz = 3 // NFULA_CFG_NLBUFSIZ: __be32, bytes of one batch skb
	nfulaCfgTimeout = 4 // NFULA_CFG_TIMEOUT: __be32, 1/100 s
	nfulaCfgQthresh = 5 // NFULA_CFG_QTHRESH: __be32, packets per batch
	nfulaCfgFlags   = 6 // NFULA_CFG_FLAGS: __be16
)

// Commands in NFULA_CFG_CMD (enum nfulnl_msg_config_cmds).
//
// NFULNL_CFG_CMD_PF_BIND (3) and NFULNL_CFG_CMD_PF_UNBIND (4) are
// deliberately absent: see the package documentation.
const (
	nfulnlCfgCmdBind   = 1 // NFULNL_CFG_CMD_BIND
	nfulnlCfgCmdUnbind = 2 // NFULNL_CFG_CMD_UNBIND
)

// Copy modes in NFULA_CFG_MODE.
const nfulnlCopyPacket = 2 // NFULNL_COPY_PACKET

// Flags in NFULA_CFG_FLAGS. Only NFULNL_CFG_F_SEQ is used: the per-namespace
// NFULNL_CFG_F_SEQ_GLOBAL (0x2) counts the packets of every group, so its
// gaps say nothing about this socket, and NFULNL_CFG_F_CONNTRACK (0x4) is
// not needed.
const nfulnlCfgFSeq = 0x0001 // NFULNL_CFG_F_SEQ: per-instance NFULA_SEQ

// nlbufsizMax is the largest NFULA_CFG_NLBUFSIZ the kernel accepts
// (net/netfilter/nfnetlink_log.c); it ignores larger values, and values
// below its default, NLMSG_GOODSIZE, without an error.
const nlbufsizMax = 131072

// nlbufsizBest is the largest batch buffer Open asks for: a batch is one
// skb allocated in softirq context (GFP_ATOMIC) of NFULA_CFG_NLBUFSIZ
// bytes plus struct skb_shared_info (320 bytes on x86-64, up to about 800
// with a large CONFIG_MAX_SKB_FRAGS), rounded up by the allocator to a
// power of two. 128 KiB less 1 KiB stays one 128 KiB (order-5)
// allocation; nlbufsizMax would be a 256 KiB one, half of it never used
// but counted against the socket's receive buffer. It holds about 840
// logged SYNs or 560 packets cut at 128 bytes: the socket's receive
// buffer holds as many packets as with smaller batches (the bytes per
// packet are the same), in half as many datagrams. When the kernel cannot
// find 128 KiB at once it sends the packet alone
// (net/netfilter/nfnetlink_log.c, nfulnl_alloc_skb), which costs a wakeup,
// not a packet.
const nlbufsizBest = 128<<10 - 1024

// Packet attributes (enum nfulnl_attr_type).
const (
	nfulaPacketHdr     = 1  // NFULA_PACKET_HDR: struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
	nfulaMark          = 2  // NFULA_MARK: __be32
	nfulaTimestamp     = 3  // NFULA_TIMESTAMP: struct nfulnl_msg_packet_timestamp { __be64 sec; __be64 usec; }
	nfulaIfindexIndev  = 4  // NFULA_IFINDEX_INDEV: __be32
	nfulaIfindexOutdev = 5  // NFULA_IFINDEX_OUTDEV: __be32
	nfulaPayload       = 9  // NFULA_PAYLOAD: the packet from the network header on
	nfulaPrefix        = 10 // NFULA_PREFIX: NUL-terminated string
	nfulaSeq           = 12 // NFULA_SEQ: __be32, per-instance sequence number
)

// Netlink message types and sizes (linux/netlink.h).
const (
	nlmsgNoop    = 0x1 // NLMSG_NOOP
	nlmsgError   = 0x2 // NLMSG_ERROR
	nlmsgDone    = 0x3 // NLMSG_DONE
	nlmsgOverrun = 0x4 // NLMSG_OVERRUN

	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)
	nfgenLen    = 4  // sizeof(struct nfgenmsg)
	nlaHdrLen   = 4  // sizeof(struct nlattr)
	nlaTypeMask = 0x3fff
)

func align4(n int) int { return (n + 3) &^ 3 }
