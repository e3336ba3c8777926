// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * kxgw steering program.
 *
 * Consumer requests (UDP to the gateway's fetch endpoint) go to the AF_XDP socket of the
 * receiving queue; everything else (ARP, ND, SSH, the Kafka TCP port, other UDP) passes to
 * the kernel untouched. Requests from sources outside the consumer allowlist are dropped
 * here. Every verdict is counted per CPU so user space can say why a packet went where.
 *
 * Loaded frags-aware (SEC("xdp.frags")): a plain "xdp" program cannot attach to a veth whose
 * peer MTU exceeds ~3.5 KB, and jumbo frames arrive as multi-buffer xdp_buffs. Headers are
 * parsed from the linear part only; a packet whose headers spill into fragments is passed.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Counter slots; keep in sync with src/xdp/loader.rs (Counter). */
enum kxgw_counter {
	CNT_STEERED = 0,
	CNT_PASSED = 1,
	CNT_DROPPED_ACL = 2,
	CNT_DROPPED_MALFORMED = 3,
	CNT_NO_SOCKET = 4,
	CNT_MAX = 5,
};

/* Configuration, written by user space before load (read-only globals). Addresses and port
 * are in network byte order. A zero address of a family means "any address of that family"
 * only when fetch_any_addr is set (the endpoint listens on 0.0.0.0 / ::). */
const volatile __u16 fetch_port = 0;
const volatile __u8 fetch_has_v4 = 0;
const volatile __u8 fetch_has_v6 = 0;
const volatile __u8 fetch_any_addr = 0;
const volatile __u32 fetch_addr_v4 = 0;
const volatile __u8 fetch_addr_v6[16] = {};
/* Non-zero when the allowlist has entries: then sources that match no prefix are dropped. */
const volatile __u8 acl_enabled = 0;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u8);
} allow_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6);
	__type(value, __u8);
} allow_v6 SEC(".maps");

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

struct vlan_hdr_ {
	__be16 tci;
	__be16 encap_proto;
};

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);
	if (v)
		*v += 1;
}

static __always_inline int pass(void)
{
	count(CNT_PASSED);
	return XDP_PASS;
}

/* Headers we need are missing from the linear area. If the frame has fragments the headers
 * may continue there: leave it to the kernel. Otherwise the packet is truncated. */
static __always_inline int truncated(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (bpf_xdp_get_buff_len(ctx) > (__u64)(data_end - data))
		return pass();
	count(CNT_DROPPED_MALFORMED);
	return XDP_DROP;
}

static __always_inline __u64 ip_offset(struct xdp_md *ctx, void *ip)
{
	__u64 off = (__u64)(ip - (void *)(long)ctx->data);
	/* Keep it a scalar: otherwise clang folds `off + len` into `ip + len - data`, pointer
	 * math the 6.1/6.12 verifiers refuse. */
	barrier_var(off);
	return off;
}

/* A 16-bit big-endian header field as a bounded scalar. Verifiers before 6.13 (6.1, 6.12)
 * do not track bounds through a byte swap, so without the mask the value is "unbounded" and
 * any pointer math with it is refused; the barrier keeps clang from dropping the mask. */
static __always_inline __u32 be16_field(__be16 v)
{
	__u32 x = bpf_ntohs(v);
	barrier_var(x);
	return x & 0xffff;
}

static __always_inline int steer(struct xdp_md *ctx)
{
	__u32 queue = ctx->rx_queue_index;
	/* Look first so a missing socket is counted, not silently passed by the fallback. */
	if (!bpf_map_lookup_elem(&xsks, &queue)) {
		count(CNT_NO_SOCKET);
		return XDP_PASS;
	}
	count(CNT_STEERED);
	return bpf_redirect_map(&xsks, queue, XDP_PASS);
}

/* UDP header at `udp`, `ip_payload_len` bytes of IP payload announced by the IP header. */
static __always_inline int check_udp(struct xdp_md *ctx, struct udphdr *udp, __u32 ip_payload_len,
				     int allowed)
{
	void *data_end = (void *)(long)ctx->data_end;
	if ((void *)(udp + 1) > data_end)
		return truncated(ctx);
	if (udp->dest != fetch_port)
		return pass();
	__u32 ulen = be16_field(udp->len);
	/* IPv6 jumbograms (len 0) never reach the fetch port legitimately. */
	if (ulen < sizeof(*udp) || ulen > ip_payload_len) {
		count(CNT_DROPPED_MALFORMED);
		return XDP_DROP;
	}
	if (!allowed) {
		count(CNT_DROPPED_ACL);
		return XDP_DROP;
	}
	return steer(ctx);
}

static __always_inline int handle_v4(struct xdp_md *ctx, struct iphdr *ip)
{
	void *data_end = (void *)(long)ctx->data_end;
	if ((void *)(ip + 1) > data_end)
		return truncated(ctx);
	if (ip->version != 4 || ip->ihl < 5) {
		count(CNT_DROPPED_MALFORMED);
		return XDP_DROP;
	}
	if (!fetch_has_v4 || ip->protocol != IPPROTO_UDP)
		return pass();
	if (!fetch_any_addr && ip->daddr != fetch_addr_v4)
		return pass();
	/* Fragments: the kernel reassembles them; the fetch protocol never fragments. */
	if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
		return pass();
	__u32 hlen = ip->ihl * 4;
	__u32 tot = be16_field(ip->tot_len);
	/* The IP datagram must fit in the frame (fragments included). */
	if (tot < hlen || ip_offset(ctx, ip) + tot > bpf_xdp_get_buff_len(ctx)) {
		count(CNT_DROPPED_MALFORMED);
		return XDP_DROP;
	}
	struct udphdr *udp = (void *)ip + hlen;
	int allowed = 1;
	if (acl_enabled) {
		struct lpm_v4 key = {.prefixlen = 32};
		__builtin_memcpy(key.addr, &ip->saddr, 4);
		allowed = bpf_map_lookup_elem(&allow_v4, &key) != NULL;
	}
	return check_udp(ctx, udp, tot - hlen, allowed);
}

static __always_inline int v6_addr_eq(const struct in6_addr *a)
{
	const __u8 *b = (const __u8 *)a;
#pragma unroll
	for (int i = 0; i < 16; i++)
		if (b[i] != fetch_addr_v6[i])
			return 0;
	return 1;
}

static __always_inline int handle_v6(struct xdp_md *ctx, struct ipv6hdr *ip6)
{
	void *data_end = (void *)(long)ctx->data_end;
	if ((void *)(ip6 + 1) > data_end)
		return truncated(ctx);
	if (ip6->version != 6) {
		count(CNT_DROPPED_MALFORMED);
		return XDP_DROP;
	}
	/* Extension headers pass: requests never carry them. */
	if (!fetch_has_v6 || ip6->nexthdr != IPPROTO_UDP)
		return pass();
	if (!fetch_any_addr && !v6_addr_eq(&ip6->daddr))
		return pass();
	__u32 plen = be16_field(ip6->payload_len);
	if (ip_offset(ctx, ip6) + sizeof(*ip6) + plen > bpf_xdp_get_buff_len(ctx)) {
		count(CNT_DROPPED_MALFORMED);
		return XDP_DROP;
	}
	int allowed = 1;
	if (acl_enabled) {
		struct lpm_v6 key = {.prefixlen = 128};
		__builtin_memcpy(key.addr, &ip6->saddr, 16);
		allowed = bpf_map_lookup_elem(&allow_v6, &key) != NULL;
	}
	return check_udp(ctx, (struct udphdr *)(ip6 + 1), plen, allowed);
}

SEC("xdp.frags")
int kxgw_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return truncated(ctx);

	__u16 proto = eth->h_proto;
	void *cursor = eth + 1;
	/* Up to two VLAN tags (802.1Q, or QinQ with an 802.1ad outer tag). */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		struct vlan_hdr_ *vh = cursor;
		if ((void *)(vh + 1) > data_end)
			return truncated(ctx);
		proto = vh->encap_proto;
		cursor = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, cursor);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, cursor);
	return pass();
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
