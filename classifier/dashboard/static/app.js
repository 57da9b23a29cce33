/* connscope dashboard (placeholder; full version follows) */
