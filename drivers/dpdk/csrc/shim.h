/* Tiny C helpers for what bindgen cannot wrap: thread-local rte_errno and macros. */
#ifndef FERRY_DPDK_SHIM_H
#define FERRY_DPDK_SHIM_H
#include <stdint.h>
struct rte_mbuf;

/** The calling thread's rte_errno (a per-lcore thread-local variable). */
int ferry_rte_errno(void);
/** rte_pktmbuf_mtod(m, void *): start of the first segment's data. */
void *ferry_pktmbuf_mtod(struct rte_mbuf *m);
/** Length of the first segment's data (rte_pktmbuf_data_len). */
uint16_t ferry_pktmbuf_data_len(const struct rte_mbuf *m);
/** Total packet length over all segments (rte_pktmbuf_pkt_len). */
uint32_t ferry_pktmbuf_pkt_len(const struct rte_mbuf *m);
/** Number of segments in the chain. */
uint16_t ferry_pktmbuf_nb_segs(const struct rte_mbuf *m);
/** Next segment, or NULL. */
struct rte_mbuf *ferry_pktmbuf_next(struct rte_mbuf *m);
/** Value of RTE_MBUF_DEFAULT_BUF_SIZE. */
uint16_t ferry_mbuf_default_buf_size(void);
/** Value of SOCKET_ID_ANY. */
int ferry_socket_id_any(void);
#endif
