def critical_init_depth_study(): pass
def lazy_rich_study(): pass
def pseudo_iid_study(): pass
