#include <rte_errno.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include "shim.h"

int ferry_rte_errno(void) { return rte_errno; }
void *ferry_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }
uint16_t ferry_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t ferry_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t ferry_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
struct rte_mbuf *ferry_pktmbuf_next(struct rte_mbuf *m) { return m->next; }
uint16_t ferry_mbuf_default_buf_size(void) { return RTE_MBUF_DEFAULT_BUF_SIZE; }
int ferry_socket_id_any(void) { return SOCKET_ID_ANY; }
