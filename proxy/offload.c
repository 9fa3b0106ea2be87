/*
 * offload.c: see offload.h.
 */
#include "offload.h"

struct mx_offload {
    GThreadPool *pool;
    int max_pending;
    atomic_int pending;
};

static void run_job(gpointer data, gpointer user)
{
    mx_job *j = data;
    mx_offload_port *p = j->port;
    j->work(j);
    j->next = NULL;
    g_mutex_lock(&p->lock);
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    g_mutex_unlock(&p->lock);
    ev_async_send(p->loop, &p->async);
}

static void on_async(struct ev_loop *loop, ev_async *a, int revents)
{
    mx_offload_port *p = a->data;
    g_mutex_lock(&p->lock);
    mx_job *j = p->head;
    p->head = p->tail = NULL;
    g_mutex_unlock(&p->lock);
    while (j) {
        mx_job *next = j->next;
        atomic_fetch_sub(&j->pool->pending, 1);
        p->inflight--;
        j->done(j); /* may free j */
        j = next;
    }
}

mx_offload *mx_offload_new(int threads, int max_pending)
{
    mx_offload *o = g_new0(mx_offload, 1);
    if (threads <= 0)
        threads = (int)g_get_num_processors();
    o->max_pending = max_pending;
    o->pool = g_thread_pool_new(run_job, o, threads, TRUE, NULL);
    return o;
}

void mx_offload_free(mx_offload *o)
{
    if (!o)
        return;
    g_thread_pool_free(o->pool, FALSE, TRUE);
    g_free(o);
}

void mx_offload_port_init(mx_offload_port *p, struct ev_loop *loop)
{
    p->loop = loop;
    p->inflight = 0;
    p->head = p->tail = NULL;
    g_mutex_init(&p->lock);
    ev_async_init(&p->async, on_async);
    p->async.data = p;
    ev_async_start(loop, &p->async);
}

void mx_offload_port_close(mx_offload_port *p)
{
    ev_async_stop(p->loop, &p->async);
    g_mutex_clear(&p->lock);
}

mx_rc mx_offload_submit(mx_offload *o, mx_offload_port *p, mx_job *j)
{
    if (atomic_fetch_add(&o->pending, 1) >= o->max_pending) {
        atomic_fetch_sub(&o->pending, 1);
        return MX_AGAIN;
    }
    j->port = p;
    j->pool = o;
    p->inflight++;
    g_thread_pool_push(o->pool, j, NULL);
    return MX_OK;
}

int mx_offload_pending(const mx_offload *o) { return atomic_load(&((mx_offload *)o)->pending); }
