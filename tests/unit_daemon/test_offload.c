/*
 * test_offload.c: blocking jobs run off the loop, finish on it, and the
 * backlog limit refuses instead of queueing.
 */
#include <glib.h>
#include <unistd.h>

#include "offload.h"

typedef struct job {
    mx_job base;
    GThread *loop_thread;
    GThread *ran_on;
    GThread *done_on;
    int *done_count;
    struct ev_loop *loop;
    int total;
    GMutex *gate; /* held by the test to keep workers busy */
} job;

static void work(mx_job *j)
{
    job *t = (job *)j;
    if (t->gate) {
        g_mutex_lock(t->gate);
        g_mutex_unlock(t->gate);
    }
    t->ran_on = g_thread_self();
}

static void done(mx_job *j)
{
    job *t = (job *)j;
    t->done_on = g_thread_self();
    if (++*t->done_count == t->total)
        ev_break(t->loop, EVBREAK_ALL);
}

static void test_jobs_run_off_loop_and_complete_on_it(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mx_offload *o = mx_offload_new(2, 100);
    mx_offload_port port;
    mx_offload_port_init(&port, loop);
    int count = 0;
    job jobs[50];
    for (int i = 0; i < 50; i++) {
        jobs[i] = (job){.base = {.work = work, .done = done}, .done_count = &count,
                        .loop = loop, .total = 50};
        g_assert_cmpint(mx_offload_submit(o, &port, &jobs[i].base), ==, MX_OK);
    }
    /* nothing completes before the loop runs */
    g_assert_cmpint(count, ==, 0);
    ev_run(loop, 0);
    g_assert_cmpint(count, ==, 50);
    for (int i = 0; i < 50; i++) {
        g_assert_true(jobs[i].ran_on != g_thread_self());
        g_assert_true(jobs[i].done_on == g_thread_self());
    }
    g_assert_cmpint(mx_offload_pending(o), ==, 0);
    mx_offload_port_close(&port);
    mx_offload_free(o);
    ev_loop_destroy(loop);
}

static void test_full_backlog_is_refused(void)
{
    struct ev_loop *loop = ev_loop_new(0);
    mx_offload *o = mx_offload_new(1, 3);
    mx_offload_port port;
    mx_offload_port_init(&port, loop);
    GMutex gate;
    g_mutex_init(&gate);
    g_mutex_lock(&gate);
    int count = 0;
    job jobs[4];
    for (int i = 0; i < 4; i++)
        jobs[i] = (job){.base = {.work = work, .done = done}, .done_count = &count,
                        .loop = loop, .total = 3, .gate = &gate};
    for (int i = 0; i < 3; i++)
        g_assert_cmpint(mx_offload_submit(o, &port, &jobs[i].base), ==, MX_OK);
    g_assert_cmpint(mx_offload_submit(o, &port, &jobs[3].base), ==, MX_AGAIN);
    g_mutex_unlock(&gate);
    ev_run(loop, 0);
    g_assert_cmpint(count, ==, 3);
    /* room again once they finished */
    jobs[3].total = 4;
    g_assert_cmpint(mx_offload_submit(o, &port, &jobs[3].base), ==, MX_OK);
    ev_run(loop, 0);
    g_assert_cmpint(count, ==, 4);
    mx_offload_port_close(&port);
    mx_offload_free(o);
    g_mutex_clear(&gate);
    ev_loop_destroy(loop);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/offload/jobs run off the loop and complete on it",
                    test_jobs_run_off_loop_and_complete_on_it);
    g_test_add_func("/offload/a full backlog is refused, not queued",
                    test_full_backlog_is_refused);
    return g_test_run();
}
