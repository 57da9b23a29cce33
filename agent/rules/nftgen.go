package rules

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// Messages and attributes of nf_tables (linux/netfilter/nf_tables.h).
const (
	nftMsgNewGen = 15 // NFT_MSG_NEWGEN: the answer, with NFTA_GEN_ID
	nftMsgGetGen = 16 // NFT_MSG_GETGEN
	nftaGenID    = 1  // NFTA_GEN_ID: __be32
)

// NFTGeneration returns the nf_tables ruleset generation of the calling
// thread's network namespace: a number the kernel increments with every
// committed change to any nf_tables table of the namespace, which
// includes every change iptables-nft and ip6tables-nft make (and none that
// iptables-legacy makes). It asks the kernel over one netlink socket and
// runs no program. The caller needs CAP_NET_ADMIN.
func NFTGeneration() (uint32, error) {
	c, err := netfilter.Dial(nil)
	if err != nil {
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	}
	defer c.Close()
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysNFTables,
		MessageType: nftMsgGetGen,
		Family:      netfilter.ProtoUnspec,
		Version:     unix.NFNETLINK_V0,
		Flags:       netlink.Request,
	}, nil)
	if err != nil {
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	}
	msgs, err := c.Query(req)
	if err != nil {
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	}
	for _, m := range msgs {
		h, attrs, err := netfilter.UnmarshalNetlink(m)
		if err != nil || h.SubsystemID != netfilter.NFSubsysNFTables || h.MessageType != nftMsgNewGen {
			continue
		}
		for _, a := range attrs {
			if a.Type == nftaGenID && len(a.Data) == 4 {
				return a.Uint32(), nil
			}
		}
	}
	return 0, errors.New("nf_tables generation: the kernel's answer holds no NFTA_GEN_ID")
}
